-- settle: release a request's hold, charge its actual cost, write ledger and usage.
-- Idempotent: the hold is the token; a request without one was settled (or
-- refunded) already, and settling it again changes nothing.
-- KEYS: account hash, holds hash, hold deadlines zset, ledger stream, usage stream,
--       key state hash of the key that made the request   (one {acct:ID} slot)
-- ARGV: request id, charge (micro, >= 0), ledger reason ('' = no entry when charge is 0),
--       actual tokens (corrects the key's tokens/min bucket), then field/value pairs of the usage row
-- Returns {1, balance, charged} or {0, 0, 0} when there was no hold.
-- Integers are written with '%d': Lua 5.1's tostring() gives "-0" for a zero
-- charge and "1.2345678901235e+14" for amounts of 1e14 and more.
local function int(n) return string.format('%d', n) end
local hold = redis.call('HGET', KEYS[2], ARGV[1])
if not hold then return {0, 0, 0} end
local amount, _, estimate = string.match(hold, '^(%d+):?([^:]*):?(%d*)$')
amount = tonumber(amount)
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'held', -amount)
local charge = tonumber(ARGV[2])

-- The key's live state: one fewer in flight, spend so far, and the tokens/min
-- bucket corrected from the admission estimate to what was really used.
if redis.call('HEXISTS', KEYS[6], 'inflight') == 1 then
  redis.call('HINCRBY', KEYS[6], 'inflight', -1)
end
if charge > 0 then
  local day = math.floor(tonumber(redis.call('TIME')[1]) / 86400)
  redis.call('HINCRBY', KEYS[6], 'spend', charge)
  redis.call('HINCRBY', KEYS[6], 'spend:' .. day, charge)
end
local actual = tonumber(ARGV[4])
local cap = tonumber(redis.call('HGET', KEYS[6], 'tk_cap') or '0')
if cap > 0 and actual and estimate ~= '' then
  local level = tonumber(redis.call('HGET', KEYS[6], 'tk') or cap)
  redis.call('HSET', KEYS[6], 'tk', tostring(math.min(cap, level - (actual - tonumber(estimate)))))
end

local balance
if charge > 0 then
  balance = redis.call('HINCRBY', KEYS[1], 'balance', -charge)
else
  balance = tonumber(redis.call('HGET', KEYS[1], 'balance'))
end
if charge > 0 or ARGV[3] ~= '' then
  local reason = ARGV[3]
  if reason == '' then reason = 'charge' end
  redis.call('XADD', KEYS[4], '*', 'amount', int(-charge), 'reason', reason,
             'ref', ARGV[1], 'balance', int(balance))
end
local row = {}
for i = 5, #ARGV do row[#row + 1] = ARGV[i] end
row[#row + 1] = 'charged_micro'
row[#row + 1] = int(charge)
row[#row + 1] = 'hold_micro'
row[#row + 1] = int(amount)
redis.call('XADD', KEYS[5], '*', unpack(row))
return {1, balance, charge}
