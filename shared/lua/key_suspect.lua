-- key_suspect: Google gave a verdict about a pool key (API_KEY_INVALID, SERVICE_DISABLED, ...) on some
-- request. The key is held back from every worker of the node while one fixed probe request confirms it
-- (a tenant's request alone never disables a key); only the caller that takes the probe lock probes.
-- KEYS[1] the node's key state hash, KEYS[2] the key's probe lock
-- ARGV: label, now ms, hold ms, channel, prober id
-- Returns 1: the caller probes; 0: the key is disabled already, or another worker probes it
local state, label = KEYS[1], ARGV[1]
local now, hold = tonumber(ARGV[2]), tonumber(ARGV[3])
local disabled = redis.call('HGET', state, label .. ':disabled')
if disabled and disabled ~= '' then return 0 end
local cool_until = tonumber(redis.call('HGET', state, label .. ':cool_until') or '0')
if now + hold > cool_until then redis.call('HSET', state, label .. ':cool_until', now + hold) end
if not redis.call('SET', KEYS[2], ARGV[5], 'NX', 'PX', hold) then return 0 end
redis.call('HSET', state, label .. ':probing', '1')
redis.call('PUBLISH', ARGV[4], label)
return 1
