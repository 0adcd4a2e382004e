-- webhook_rotate: replace an account's webhook signing secret, keeping the old one for an overlap.
-- KEYS: account hash
-- ARGV: the new secret, overlap (seconds)
-- Returns {1, previous secret's end (unix s; 0 when there was none)}, or {0, 0} when the account does not exist.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
local current = redis.call('HGET', KEYS[1], 'webhook_secret')
local ends = 0
if current then
  ends = tonumber(redis.call('TIME')[1]) + tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'webhook_secret_previous', current, 'webhook_secret_previous_until', ends)
else
  redis.call('HDEL', KEYS[1], 'webhook_secret_previous', 'webhook_secret_previous_until')
end
redis.call('HSET', KEYS[1], 'webhook_secret', ARGV[1])
return {1, ends}
