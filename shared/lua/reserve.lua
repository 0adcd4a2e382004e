-- reserve: admit one request for one key, then hold its base cost.
-- Checks, in order, and nothing is written unless all pass:
--   per-key rate limits (requests/min and tokens/min token buckets, concurrent requests),
--   the key's credit limits (total and per UTC day), the account's available credits.
-- KEYS: account hash, holds hash, hold deadlines zset, key state hash   (one {acct:ID} slot)
-- ARGV: request id, amount (micro), deadline (ms), key id, rpm, tpm, estimated tokens,
--       max concurrent, credit limit (micro), daily credit limit (micro)   (0 = no limit)
-- Returns {status, balance, held, rpm_left, rpm_reset_ms, tpm_left, tpm_reset_ms, retry_after_ms}
--   status: 1 held, 0 already held (replay), -1 no account, -2 insufficient credits,
--           -3 requests/min, -4 tokens/min, -5 concurrency, -6 key credit limit
local rid, amount = ARGV[1], tonumber(ARGV[2])
local rpm, tpm, est = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local max_conc, limit, daily = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])

local balance = redis.call('HGET', KEYS[1], 'balance')
if not balance then return {-1, 0, 0, 0, 0, 0, 0, 0} end
balance = tonumber(balance)
local held = tonumber(redis.call('HGET', KEYS[1], 'held') or '0')
if redis.call('HEXISTS', KEYS[2], rid) == 1 then return {0, balance, held, 0, 0, 0, 0, 0} end

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[4], 'rq', 'rq_ts', 'tk', 'tk_ts', 'inflight', 'spend',
                         'spend:' .. math.floor(tonumber(t[1]) / 86400))

-- A token bucket of `cap` refilled at cap per minute; an idle key holds a full bucket.
local function bucket(cap, level, ts)
  if cap <= 0 then return 0 end
  level = tonumber(level)
  if not level then return cap end
  return math.min(cap, level + (now - tonumber(ts)) * cap / 60)
end

local rq = bucket(rpm, state[1], state[2])
local tk = bucket(tpm, state[3], state[4])
local need = math.min(est, tpm)
local function reset_ms(cap, level) if cap <= 0 then return 0 end return math.ceil((cap - level) * 60000 / cap) end
local function reply(status, retry_ms, rq_after, tk_after)
  return {status, balance, held, math.floor(rq_after), reset_ms(rpm, rq_after), math.floor(tk_after),
          reset_ms(tpm, tk_after), math.ceil(retry_ms)}
end

if rpm > 0 and rq < 1 then return reply(-3, (1 - rq) * 60000 / rpm, rq, tk) end
if tpm > 0 and tk < need then return reply(-4, (need - tk) * 60000 / tpm, rq, tk) end
if max_conc > 0 and tonumber(state[5] or '0') >= max_conc then return reply(-5, 1000, rq, tk) end
if limit > 0 and tonumber(state[6] or '0') >= limit then return reply(-6, 0, rq, tk) end
if daily > 0 and tonumber(state[7] or '0') >= daily then
  return reply(-6, (86400 - tonumber(t[1]) % 86400) * 1000, rq, tk)
end
if balance - held < amount then return reply(-2, 0, rq, tk) end

if rpm > 0 then rq = rq - 1 end
if tpm > 0 then tk = tk - need end
redis.call('HSET', KEYS[4], 'rq', tostring(rq), 'rq_ts', tostring(now), 'tk', tostring(tk), 'tk_ts', tostring(now),
           'tk_cap', tostring(tpm))
redis.call('HINCRBY', KEYS[4], 'inflight', 1)
redis.call('HSET', KEYS[2], rid, ARGV[2] .. ':' .. ARGV[4] .. ':' .. tostring(need))
redis.call('ZADD', KEYS[3], ARGV[3], rid)
held = redis.call('HINCRBY', KEYS[1], 'held', amount)
return reply(1, 0, rq, tk)
