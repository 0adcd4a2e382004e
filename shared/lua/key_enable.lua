-- key_enable: a pool key is usable again: an operator re-enabled it, a health probe succeeded with it,
-- or the probe of a suspected verdict found it working. Its cooldown and strikes go with the verdict.
-- KEYS[1] the node's key state hash, KEYS[2] the key's probe lock
-- ARGV: label, channel
-- Returns 1 when it was disabled, 0 otherwise
local state, label = KEYS[1], ARGV[1]
local was = redis.call('HGET', state, label .. ':disabled')
redis.call('HDEL', state, label .. ':disabled', label .. ':disabled_at', label .. ':probing',
           label .. ':cool_until', label .. ':strikes')
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[2], label)
if was and was ~= '' then return 1 end
return 0
