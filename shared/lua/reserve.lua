-- reserve: admit one request for one key, then hold between its floor and its worst-case cost.
-- Checks, in order, and nothing is written unless all pass:
--   per-key rate limits (requests/min and tokens/min token buckets, concurrent requests), then the
--   account's (the sum of its keys: its own buckets, and its open holds for concurrency), then the grant:
--   granted = min(amount, the account's available credits (balance - held),
--                 the key's credit-limit room, the key's daily-limit room)
--   where a key's room is its limit minus its spend (total, or today's) minus its open holds;
--   a grant below the floor (min amount) is refused.
-- KEYS: account hash, holds hash, hold deadlines zset, key state hash,
--       [account limit state hash: the account's own buckets],
--       [released holds hash, released-at zset: with a replaced request id]   (one {acct:ID} slot)
-- The account's limits are its hash's rpm, tpm, max_concurrent (0 = none); without KEYS[5] they are not applied.
-- ARGV: request id, amount (micro, the worst case), deadline (ms), key id, rpm, tpm, estimated tokens,
--       max concurrent, credit limit (micro), daily credit limit (micro)   (0 = no limit),
--       [min amount (micro, the floor; absent or '' = the amount; at least 1)],
--       [replaced request id: the previous attempt of the same request (a failover or a model fallback)]
-- Replacing: the previous attempt failed before any output, so its hold will only ever be refunded. When
-- it is still held (by this key), it is released in the same step as this one is taken: its credits,
-- its concurrency slot and its tokens/min estimate count as free here. Nothing changes when this
-- reservation is refused. The released hold is remembered as the reconciler's are (expire.lua), so the
-- previous attempt's settlement, when it comes, still writes its usage row (at no charge).
-- Returns {status, balance, held, rpm_left, rpm_reset_ms, tpm_left, tpm_reset_ms, retry_after_ms, granted}
--   status: 1 held, 0 already held (replay; granted = that hold's amount), -1 no account,
--           -2 insufficient credits (the available balance is below the floor),
--           -3 requests/min, -4 tokens/min, -5 concurrency,
--           -6 key credit limit (the key's room is below the floor; the balance would cover it),
--           -7 the account's requests/min, -8 the account's tokens/min, -9 the account's concurrency
--   rpm_left/tpm_left and their resets: the tighter of the key's bucket and the account's.
--           -10 the account is fenced: Redis restarted and the recovery has not re-applied what it may
--              have lost yet (see settle.lua); the caller answers 503, retry shortly
--   granted: the amount held (0 when refused).
-- The hold is "<granted>:<key id>:<estimated tokens>" (shared/contracts.py Hold); the key state's
-- `held` gains `granted` (settle.lua and expire.lua take it back).
local function int(n) return string.format('%d', n) end
local rid, amount = ARGV[1], tonumber(ARGV[2])
local rpm, tpm, est = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local max_conc, limit, daily = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local floor = math.max(1, tonumber(ARGV[11] or '') or amount)  -- a hold is never empty
-- One read of the account: its balance, fence stamp, open holds and own limits.
local acct = redis.call('HMGET', KEYS[1], 'balance', 'synced', 'held', 'rpm', 'tpm', 'max_concurrent')
local a_rpm, a_tpm, a_conc = 0, 0, 0
if KEYS[5] then
  a_rpm, a_tpm, a_conc = tonumber(acct[4] or '') or 0, tonumber(acct[5] or '') or 0, tonumber(acct[6] or '') or 0
end

local balance = acct[1]
if not balance then return {-1, 0, 0, 0, 0, 0, 0, 0, 0} end
balance = tonumber(balance)
local RUN_ID = '__SERVER_RUN_ID__'  -- this server run's id, written in at load (shared/scripts.py)
local synced = acct[2]
if synced and synced ~= RUN_ID then
  return {-10, 0, 0, 0, 0, 0, 0, 1000, 0}
end
local held = tonumber(acct[3] or '0')
local existing = redis.call('HGET', KEYS[2], rid)
if existing then
  return {0, balance, held, 0, 0, 0, 0, 0, tonumber(string.match(existing, '^(%d+)'))}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local today = 'spend:' .. math.floor(tonumber(t[1]) / 86400)
local state = redis.call('HMGET', KEYS[4], 'rq', 'rq_ts', 'tk', 'tk_ts', 'inflight', 'spend', today, 'held')
local replaced, freed, freed_est = ARGV[12], 0, 0
if replaced and replaced ~= '' then
  local previous = redis.call('HGET', KEYS[2], replaced)
  local amount_s, key_s, est_s
  if previous then amount_s, key_s, est_s = string.match(previous, '^(%d+):([^:]*):?(%d*)$') end
  if key_s == ARGV[4] then freed, freed_est = tonumber(amount_s), tonumber(est_s) or 0 else replaced = nil end
else
  replaced = nil
end
local inflight = tonumber(state[5] or '0')
if replaced then inflight = inflight - 1; held = held - freed end

-- A token bucket of `cap` refilled at cap per minute; an idle key holds a full bucket.
local function bucket(cap, level, ts)
  if cap <= 0 then return 0 end
  level = tonumber(level)
  if not level then return cap end
  return math.min(cap, level + (now - tonumber(ts)) * cap / 60)
end

local rq = bucket(rpm, state[1], state[2])
local tk = bucket(tpm, state[3], state[4])
local account = {}
if a_rpm > 0 or a_tpm > 0 then account = redis.call('HMGET', KEYS[5], 'rq', 'rq_ts', 'tk', 'tk_ts') end
local arq = bucket(a_rpm, account[1], account[2])
local atk = bucket(a_tpm, account[3], account[4])
if replaced then  -- the replaced attempt's estimate back, as its settlement (0 tokens used) would give it
  if tpm > 0 then tk = math.min(tpm, tk + freed_est) end
  if a_tpm > 0 then atk = math.min(a_tpm, atk + freed_est) end
end
-- What the buckets are charged: the estimate, within the tighter tokens/min cap (key's and account's alike).
local need_cap = tpm
if a_tpm > 0 and (tpm <= 0 or a_tpm < tpm) then need_cap = a_tpm end
local need = math.min(est, need_cap)
local function reset_ms(cap, level) if cap <= 0 then return 0 end return math.ceil((cap - level) * 60000 / cap) end
local function tighter(cap, level, a_cap, a_level)
  if a_cap > 0 and (cap <= 0 or a_level < level) then return math.floor(a_level), reset_ms(a_cap, a_level) end
  return math.floor(level), reset_ms(cap, level)
end
local function reply(status, retry_ms, granted)
  local rq_left, rq_reset = tighter(rpm, rq, a_rpm, arq)
  local tk_left, tk_reset = tighter(tpm, tk, a_tpm, atk)
  return {status, balance, held, rq_left, rq_reset, tk_left, tk_reset, math.ceil(retry_ms), granted}
end

if rpm > 0 and rq < 1 then return reply(-3, (1 - rq) * 60000 / rpm, 0) end
if tpm > 0 and tk < need then return reply(-4, (need - tk) * 60000 / tpm, 0) end
if max_conc > 0 and inflight >= max_conc then return reply(-5, 1000, 0) end
if a_rpm > 0 and arq < 1 then return reply(-7, (1 - arq) * 60000 / a_rpm, 0) end
if a_tpm > 0 and atk < need then return reply(-8, (need - atk) * 60000 / a_tpm, 0) end
if a_conc > 0 and redis.call('HLEN', KEYS[2]) - (replaced and 1 or 0) >= a_conc then return reply(-9, 1000, 0) end

-- The grant: the key's open holds count against its limits as if already spent.
local key_held = math.max(0, tonumber(state[8] or '0') - freed)
local available = balance - held
local granted = math.min(amount, available)
local total_room, daily_room = granted, granted
if limit > 0 then total_room = limit - tonumber(state[6] or '0') - key_held end
if daily > 0 then daily_room = daily - tonumber(state[7] or '0') - key_held end
granted = math.min(granted, total_room, daily_room)
if granted < floor then
  if available < floor then return reply(-2, 0, 0) end
  local retry = 0
  if daily_room < floor and total_room >= floor then retry = (86400 - tonumber(t[1]) % 86400) * 1000 end
  return reply(-6, retry, 0)
end

if rpm > 0 then rq = rq - 1 end
if tpm > 0 then tk = tk - need end
if a_rpm > 0 or a_tpm > 0 then
  if a_rpm > 0 then arq = arq - 1 end
  if a_tpm > 0 then atk = atk - need end
  redis.call('HSET', KEYS[5], 'rq', tostring(arq), 'rq_ts', tostring(now), 'tk', tostring(atk), 'tk_ts', tostring(now),
             'tk_cap', tostring(a_tpm))
end
-- The limits are kept with the key's state so that a late settlement (settle.lua) can respect them.
redis.call('HSET', KEYS[4], 'rq', tostring(rq), 'rq_ts', tostring(now), 'tk', tostring(tk), 'tk_ts', tostring(now),
           'tk_cap', tostring(tpm), 'limit', int(limit), 'daily_limit', int(daily))
if replaced then
  redis.call('HDEL', KEYS[2], replaced)
  redis.call('ZREM', KEYS[3], replaced)
  redis.call('HSET', KEYS[6], replaced, int(freed) .. ':' .. ARGV[4] .. ':')
  redis.call('ZADD', KEYS[7], math.floor(now * 1000), replaced)
else
  redis.call('HINCRBY', KEYS[4], 'inflight', 1)
end
redis.call('HSET', KEYS[4], 'held', int(key_held + granted))
redis.call('HSET', KEYS[2], rid, int(granted) .. ':' .. ARGV[4] .. ':' .. tostring(need))
redis.call('ZADD', KEYS[3], ARGV[3], rid)
held = redis.call('HINCRBY', KEYS[1], 'held', granted - freed)
return reply(1, 0, granted)
