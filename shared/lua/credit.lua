-- credit: add (or, for an admin adjustment, remove) credits, once per reference.
-- With Postgres configured the credit is recorded there first (shared/db/credits_record.py); this
-- applies it, once per reference, so applying it again (a retry, the recovery) changes nothing.
-- KEYS: account hash, ledger stream, orders stream, order refs hash   (one {acct:ID} slot),
--       archive index stream (its own slot; see settle.lua)
-- ARGV: reference, amount (micro, signed), reason, order JSON (written as-is), write order ('1'/'0')
-- Returns {1, order JSON, balance} when credited now, {0, order JSON, balance} on a
-- repeated reference, {-1, '', 0} when the account does not exist, {-2, '', 0} when the account
-- is fenced for recovery (see settle.lua; the recovery applies what Postgres recorded).
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, '', 0} end
local RUN_ID = '__SERVER_RUN_ID__'  -- this server run's id, written in at load (shared/scripts.py)
local synced = redis.call('HGET', KEYS[1], 'synced')
if synced and synced ~= RUN_ID then return {-2, '', 0} end
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
if redis.call('HSETNX', KEYS[1], 'archive_pending', '1') == 1 then
  redis.call('XADD', KEYS[5], '*', 'a', string.match(KEYS[1], '{acct:(.-)}'))
end
return {1, ARGV[4], balance}
