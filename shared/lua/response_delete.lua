-- response_delete: forget one stored Response and give its bytes back to the account's cap.
-- KEYS: the response's string key, the account's responses zset, its sizes hash (one {acct:ID} slot)
-- ARGV: response id
-- Returns 1 deleted, 0 there was none (never stored, expired, dropped for room, deleted already).
local existed = redis.call('DEL', KEYS[1])
local bytes = redis.call('HGET', KEYS[3], ARGV[1])
if bytes then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('HINCRBY', KEYS[3], 'total', -tonumber(bytes))
end
redis.call('ZREM', KEYS[2], ARGV[1])
return existed
