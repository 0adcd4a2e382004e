-- response_delete: forget one stored Response and give its bytes back to the account's cap. With the
-- record on, a delete entry follows any put of it on the response archive stream, so the archiver,
-- which applies them in order, never writes back a response deleted before it was archived.
-- KEYS: the response's string key, the account's responses zset, its sizes hash (one {acct:ID} slot),
--       the response archive stream
-- ARGV: response id, account id, archive length (0: no record)
-- Returns 1 deleted, 0 there was none (never stored, expired, dropped for room, deleted already).
local existed = redis.call('DEL', KEYS[1])
local bytes = redis.call('HGET', KEYS[3], ARGV[1])
if bytes then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('HINCRBY', KEYS[3], 'total', -tonumber(bytes))
end
redis.call('ZREM', KEYS[2], ARGV[1])
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'op', 'delete', 'a', ARGV[2], 'id', ARGV[1])
end
return existed
