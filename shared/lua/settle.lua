-- settle: release a request's hold, charge its actual cost, write ledger and usage.
-- Idempotent: the hold is the token; a request without one was settled (or
-- refunded) already, and settling it again changes nothing. One exception: a hold
-- the reconciler released (expire.lua) is remembered for a while, and a settlement
-- that arrives for it then is only late: it still charges, once.
-- KEYS: account hash, holds hash, hold deadlines zset, ledger stream, usage stream,
--       key state hash of the key that made the request, released holds hash, released-at zset,
--       [the account's limit state hash (its own buckets, reserve.lua's KEYS[5])]
--       (one {acct:ID} slot), then the archive index stream (its own slot; shared/keys.py AccountKeys.money)
-- The archive index: the ledger and usage entries written here reach Postgres through the archiver
-- (worker/archiver/), which finds accounts with new entries in one stream, ``aio:{archive}:dirty``.
-- The account's own streams stay in its slot (the audit reads balance, holds and the unarchived
-- tail in one atomic snapshot); the index is a second slot, accepted consciously as enqueue.lua
-- does: the money scripts need the account's primary and the index's on one Redis (no Cluster).
-- An account is put in the index once until the archiver takes it out ("archive_pending"), so the
-- index holds at most one entry per account with unarchived entries, however busy it is.
-- Recovery fence: an account stamped "synced" with another Redis run id than this server's
-- (Redis restarted, maybe losing its last writes) is not touched until the archiver has
-- re-applied what Postgres has and Redis lost (worker/archiver/recovery.py): {-1, 0, 0}.
-- ARGV: request id, charge (micro, >= 0), ledger reason ('' = no entry when charge is 0),
--       actual tokens (corrects the key's tokens/min bucket), then field/value pairs of the usage row
-- Returns {1, balance, charged} settled, {2, balance, charged} settled late (after reconciliation),
--   {0, 0, 0} when there was nothing to settle (a replay), {-1, 0, 0} fenced (retry later).
-- What is charged never exceeds the hold, nor the balance (usage never drives a balance below zero);
-- a late charge never exceeds the released hold, the available balance, nor the key's limit room.
-- Integers are written with '%d': Lua 5.1's tostring() gives "-0" for a zero
-- charge and "1.2345678901235e+14" for amounts of 1e14 and more.
local function int(n) return string.format('%d', n) end
local RUN_ID = '__SERVER_RUN_ID__'  -- this server run's id, written in at load (shared/scripts.py)
local acct = redis.call('HMGET', KEYS[1], 'synced', 'balance')
if acct[1] and acct[1] ~= RUN_ID then return {-1, 0, 0} end
local rid = ARGV[1]
local charge = tonumber(ARGV[2])
local balance = tonumber(acct[2] or '0')
local status, amount, estimate = 1, nil, ''
local hold = redis.call('HGET', KEYS[2], rid)

if hold then
  amount, estimate = string.match(hold, '^(%d+):?[^:]*:?(%d*)$')
  amount = tonumber(amount)
  redis.call('HDEL', KEYS[2], rid)
  redis.call('ZREM', KEYS[3], rid)
  redis.call('HINCRBY', KEYS[1], 'held', -amount)
  charge = math.max(0, math.min(charge, amount, balance))
  local key = redis.call('HMGET', KEYS[6], 'inflight', 'held')
  -- Never below 0: holds taken before keys counted their holds were never added.
  local key_held = tonumber(key[2] or '0')
  if key[1] then
    redis.call('HSET', KEYS[6], 'inflight', int(tonumber(key[1]) - 1), 'held', int(math.max(0, key_held - amount)))
  else
    redis.call('HSET', KEYS[6], 'held', int(math.max(0, key_held - amount)))
  end
else
  local released = redis.call('HGET', KEYS[7], rid)
  if not released then return {0, 0, 0} end
  status = 2
  amount = tonumber(string.match(released, '^(%d+)'))
  redis.call('HDEL', KEYS[7], rid)
  redis.call('ZREM', KEYS[8], rid)
  -- The released credits may be spoken for by now: charge only what is free, within the key's limits.
  local held = tonumber(redis.call('HGET', KEYS[1], 'held') or '0')
  charge = math.max(0, math.min(charge, amount, balance - held))
  local key = redis.call('HMGET', KEYS[6], 'limit', 'daily_limit', 'spend',
                         'spend:' .. math.floor(tonumber(redis.call('TIME')[1]) / 86400), 'held')
  local limit, daily, key_held = tonumber(key[1] or '0'), tonumber(key[2] or '0'), tonumber(key[5] or '0')
  if limit > 0 then charge = math.max(0, math.min(charge, limit - tonumber(key[3] or '0') - key_held)) end
  if daily > 0 then charge = math.max(0, math.min(charge, daily - tonumber(key[4] or '0') - key_held)) end
end

-- The key's spend so far, and its tokens/min bucket corrected from the admission estimate to what was
-- really used (not for a late settlement: that minute is long gone).
if charge > 0 then
  local day = math.floor(tonumber(redis.call('TIME')[1]) / 86400)
  redis.call('HINCRBY', KEYS[6], 'spend', charge)
  redis.call('HINCRBY', KEYS[6], 'spend:' .. day, charge)
end
local actual = tonumber(ARGV[4])
-- The account's own tokens/min bucket (KEYS[9]) was charged the same estimate: corrected alike.
local buckets = {KEYS[6]}
if KEYS[9] then buckets[2] = KEYS[9] end
if status == 1 and actual and estimate ~= '' then
  for _, bucket_key in ipairs(buckets) do
    local bucket = redis.call('HMGET', bucket_key, 'tk_cap', 'tk')
    local cap = tonumber(bucket[1] or '0')
    if cap > 0 then
      local level = tonumber(bucket[2] or cap)
      redis.call('HSET', bucket_key, 'tk', tostring(math.min(cap, level - (actual - tonumber(estimate)))))
    end
  end
end

if charge > 0 then
  balance = redis.call('HINCRBY', KEYS[1], 'balance', -charge)
end
if charge > 0 or (status == 1 and ARGV[3] ~= '') then
  local reason = ARGV[3]
  if status == 2 then reason = 'late_charge' elseif reason == '' then reason = 'charge' end
  redis.call('XADD', KEYS[4], '*', 'amount', int(-charge), 'reason', reason, 'ref', rid, 'balance', int(balance))
end
local row = {}
for i = 5, #ARGV do row[#row + 1] = ARGV[i] end
row[#row + 1] = 'charged_micro'
row[#row + 1] = int(charge)
row[#row + 1] = 'hold_micro'
row[#row + 1] = int(amount)
redis.call('XADD', KEYS[5], '*', unpack(row))
if redis.call('HSETNX', KEYS[1], 'archive_pending', '1') == 1 then
  redis.call('XADD', KEYS[10], '*', 'a', string.match(KEYS[1], '{acct:(.-)}'))
end
return {status, balance, charge}
