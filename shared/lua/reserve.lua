-- reserve: hold a request's base cost if the account can cover it.
-- KEYS: account hash, holds hash, hold deadlines zset   (one {acct:ID} slot)
-- ARGV: request id, amount (micro), deadline (ms), key id
-- Returns {status, balance, held}:
--   1 held now, 0 already held (replay), -1 no such account, -2 insufficient
local balance = redis.call('HGET', KEYS[1], 'balance')
if not balance then return {-1, 0, 0} end
balance = tonumber(balance)
local held = tonumber(redis.call('HGET', KEYS[1], 'held') or '0')
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {0, balance, held} end
local amount = tonumber(ARGV[2])
if balance - held < amount then return {-2, balance, held} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':' .. ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
held = redis.call('HINCRBY', KEYS[1], 'held', amount)
return {1, balance, held}
