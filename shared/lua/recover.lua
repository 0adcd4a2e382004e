-- recover: re-apply, in one atomic step, the ledger rows Postgres has and this Redis lost, and lift
-- the account's recovery fence (worker/archiver/recovery.py decides which rows; see settle.lua).
-- Redis restarted from an AOF that missed its last writes: entries archived to Postgres (their
-- stream ids are after this stream's last id) and credits recorded in Postgres first (no stream
-- id yet, or one after the last) may be missing here. Nothing else touches a fenced account, so
-- the stream's last id read by the caller is still this stream's last id, or the call is refused.
-- KEYS: account hash, holds hash, hold deadlines zset, ledger stream, released holds hash,
--       released-at zset, order refs hash, orders stream (one {acct:ID} slot), archive index stream,
--       then the key state hashes the rows name (by position, 1 = the first of them)
-- ARGV: the ledger stream's last id as read ('0-0' when it has none), now (ms), then 7 values per row:
--       kind ('c' credit, 'x' charge, 'e' hold expired), reason, reference, amount (micro, signed),
--       key position (0: none), order JSON (credits), listed ('1'/'0': in the orders stream)
-- A credit is applied unless its reference is known here (credit.lua's own idempotency); a charge
-- takes its hold (or its released hold) with it, so the request is not settled twice; an expiry
-- moves the hold to the released holds, as expire.lua does.
-- Returns {applied rows, balance}, or {-1, last id} when the stream moved (read again).
local function int(n) return string.format('%d', n) end
local last = '0-0'
if redis.call('EXISTS', KEYS[4]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[4])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
if last ~= ARGV[1] then return {-1, last} end

local function release(rid, amount, key)
  redis.call('HDEL', KEYS[2], rid)
  redis.call('ZREM', KEYS[3], rid)
  redis.call('HINCRBY', KEYS[1], 'held', -amount)
  if key then
    if redis.call('HEXISTS', key, 'inflight') == 1 then redis.call('HINCRBY', key, 'inflight', -1) end
    local key_held = tonumber(redis.call('HGET', key, 'held') or '0')
    redis.call('HSET', key, 'held', int(math.max(0, key_held - amount)))
  end
end

local balance = tonumber(redis.call('HGET', KEYS[1], 'balance') or '0')
local day = 'spend:' .. math.floor(tonumber(redis.call('TIME')[1]) / 86400)
local applied = 0
for i = 3, #ARGV, 7 do
  local kind, reason, ref, amount = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local key = nil
  if ARGV[i + 4] ~= '0' then key = KEYS[9 + tonumber(ARGV[i + 4])] end
  local apply = true
  local hold = redis.call('HGET', KEYS[2], ref)
  if kind == 'c' then
    if redis.call('HEXISTS', KEYS[7], ref) == 1 then
      apply = false
    else
      redis.call('HSET', KEYS[7], ref, ARGV[i + 5])
      if ARGV[i + 6] == '1' then redis.call('XADD', KEYS[8], '*', 'order', ARGV[i + 5]) end
    end
  elseif kind == 'x' then
    if hold then
      release(ref, tonumber(string.match(hold, '^(%d+)')), key)
    elseif redis.call('HDEL', KEYS[5], ref) == 1 then
      redis.call('ZREM', KEYS[6], ref)
    end
    if key and amount < 0 then
      redis.call('HINCRBY', key, 'spend', -amount)
      redis.call('HINCRBY', key, day, -amount)
    end
  elseif kind == 'e' and hold then
    local held = tonumber(string.match(hold, '^(%d+)'))
    local key_id = string.match(hold, '^%d+:([^:]*)') or ''
    release(ref, held, key)
    redis.call('HSET', KEYS[5], ref, int(held) .. ':' .. key_id .. ':')
    redis.call('ZADD', KEYS[6], ARGV[2], ref)
  end
  if apply then
    if amount ~= 0 then balance = redis.call('HINCRBY', KEYS[1], 'balance', int(amount)) end
    redis.call('XADD', KEYS[4], '*', 'amount', int(amount), 'reason', reason, 'ref', ref, 'balance', int(balance))
    applied = applied + 1
  end
end
redis.call('HSET', KEYS[1], 'synced', string.match(redis.call('INFO', 'server'), 'run_id:(%x+)'))
if applied > 0 and redis.call('HSETNX', KEYS[1], 'archive_pending', '1') == 1 then
  redis.call('XADD', KEYS[9], '*', 'a', string.match(KEYS[1], '{acct:(.-)}'))
end
return {applied, balance}
