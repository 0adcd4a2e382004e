-- response_put: keep one stored Response hot, within the account's byte cap, for a TTL.
-- Entries past the TTL are forgotten first (their string keys expired by themselves); then the oldest
-- entries are dropped until the new one fits. An entry larger than the whole cap is not stored.
-- With the record on (archive length > 0), the stored record is also handed to the archiver on the
-- response archive stream (approximately capped at that length, so a long database outage cannot fill
-- Redis: what is cut off still lives here for the TTL).
-- KEYS: the response's string key, the account's responses zset (id -> stored ms), its sizes hash
--       (id -> bytes, "total")   (one {acct:ID} slot; shared/keys.py AccountKeys), the response archive stream
-- ARGV: response id, record (JSON), TTL (ms), byte cap, key prefix of the account's responses, account id,
--       archive length (0: no record)
-- Returns 1 stored, -1 larger than the cap (nothing changed but the expired entries).
local id, record, ttl, cap, prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local archive = tonumber(ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local size = string.len(record)

local function forget(member)
  local bytes = tonumber(redis.call('HGET', KEYS[3], member) or '0')
  redis.call('HDEL', KEYS[3], member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('HINCRBY', KEYS[3], 'total', -bytes)
end

for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - ttl)) do forget(member) end
if redis.call('HEXISTS', KEYS[3], id) == 1 then forget(id) end  -- stored again: replaced
if size > cap then return -1 end
local total = tonumber(redis.call('HGET', KEYS[3], 'total') or '0')
while total + size > cap do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not oldest then break end
  redis.call('DEL', prefix .. oldest)
  forget(oldest)
  total = tonumber(redis.call('HGET', KEYS[3], 'total') or '0')
end
redis.call('SET', KEYS[1], record, 'PX', ttl)
redis.call('ZADD', KEYS[2], now, id)
redis.call('HSET', KEYS[3], id, size)
redis.call('HINCRBY', KEYS[3], 'total', size)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
if archive > 0 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', archive, '*', 'op', 'put', 'a', ARGV[6], 'id', id, 'rec', record)
end
return 1
