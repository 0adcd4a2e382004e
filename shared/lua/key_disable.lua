-- key_disable: a probe confirmed Google's verdict about a pool key; it stays out of every worker's
-- rotation until an operator re-enables it (POST /admin/nodes/{node}/keys/{label}/enable) or a health
-- probe finds it working again (key_enable.lua).
-- KEYS[1] the node's key state hash, KEYS[2] the key's probe lock
-- ARGV: label, now ms, Google's reason, channel
-- Returns 1 when this call disabled it, 0 when it already was
local state, label = KEYS[1], ARGV[1]
local was = redis.call('HGET', state, label .. ':disabled')
redis.call('HDEL', state, label .. ':probing')
redis.call('DEL', KEYS[2])
if was and was ~= '' then return 0 end
redis.call('HSET', state, label .. ':disabled', ARGV[3], label .. ':disabled_at', ARGV[2])
redis.call('PUBLISH', ARGV[4], label)
return 1
