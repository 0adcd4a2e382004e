-- credit: add (or, for an admin adjustment, remove) credits, once per reference.
-- KEYS: account hash, ledger stream, orders stream, order refs hash   (one {acct:ID} slot)
-- ARGV: reference, amount (micro, signed), reason, order JSON (written as-is), write order ('1'/'0')
-- Returns {1, order JSON, balance} when credited now, {0, order JSON, balance} on a
-- repeated reference, {-1, '', 0} when the account does not exist.
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, '', 0} end
local existing = redis.call('HGET', KEYS[4], ARGV[1])
if existing then
  return {0, existing, tonumber(redis.call('HGET', KEYS[1], 'balance'))}
end
local balance = redis.call('HINCRBY', KEYS[1], 'balance', ARGV[2])
redis.call('XADD', KEYS[2], '*', 'amount', ARGV[2], 'reason', ARGV[3], 'ref', ARGV[1],
           'balance', string.format('%d', balance))  -- not tostring(): 1e14 -> "1e+14"
redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
if ARGV[5] == '1' then
  redis.call('XADD', KEYS[3], '*', 'order', ARGV[4])
end
return {1, ARGV[4], balance}
