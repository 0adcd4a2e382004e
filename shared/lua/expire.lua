-- expire: the reconciler releases a hold whose request vanished, and remembers it.
-- Released only if its deadline (ms) is still at or before the cutoff: a node worker that
-- queued the request's settlement moved the deadline on (shared/credits.py
-- settlement_pending_commands), maybe after the reconciler's scan. The release is a
-- refund (a zero ledger entry and an "expired" usage row for the trail); the hold is
-- remembered (released holds hash and released-at zset) so a settlement that was only
-- late still charges (settle.lua), until the reconciler forgets it.
-- KEYS: as settle.lua (shared/keys.py AccountKeys.money): one {acct:ID} slot and the archive index
--   (see settle.lua for both, and for the recovery fence)
-- ARGV: request id, cutoff (ms), now (ms), then field/value pairs of the usage row
-- Returns {1, balance} released, {0, 0} not (settled meanwhile, or its settlement is pending),
--   {-1, 0} fenced (the account waits for recovery).
local function int(n) return string.format('%d', n) end
local RUN_ID = '__SERVER_RUN_ID__'  -- this server run's id, written in at load (shared/scripts.py)
local synced = redis.call('HGET', KEYS[1], 'synced')
if synced and synced ~= RUN_ID then return {-1, 0} end
local rid = ARGV[1]
local hold = redis.call('HGET', KEYS[2], rid)
local deadline = tonumber(redis.call('ZSCORE', KEYS[3], rid) or '0')
if not hold or deadline > tonumber(ARGV[2]) then return {0, 0} end

local amount, key_id = string.match(hold, '^(%d+):?([^:]*)')
amount = tonumber(amount)
redis.call('HDEL', KEYS[2], rid)
redis.call('ZREM', KEYS[3], rid)
redis.call('HINCRBY', KEYS[1], 'held', -amount)
if redis.call('HEXISTS', KEYS[6], 'inflight') == 1 then
  redis.call('HINCRBY', KEYS[6], 'inflight', -1)
end
local key_held = tonumber(redis.call('HGET', KEYS[6], 'held') or '0')
redis.call('HSET', KEYS[6], 'held', int(math.max(0, key_held - amount)))
redis.call('HSET', KEYS[7], rid, int(amount) .. ':' .. key_id .. ':')
redis.call('ZADD', KEYS[8], ARGV[3], rid)

local balance = tonumber(redis.call('HGET', KEYS[1], 'balance'))
redis.call('XADD', KEYS[4], '*', 'amount', '0', 'reason', 'hold_expired', 'ref', rid, 'balance', int(balance))
local row = {}
for i = 4, #ARGV do row[#row + 1] = ARGV[i] end
row[#row + 1] = 'charged_micro'
row[#row + 1] = '0'
row[#row + 1] = 'hold_micro'
row[#row + 1] = int(amount)
redis.call('XADD', KEYS[5], '*', unpack(row))
if redis.call('HSETNX', KEYS[1], 'archive_pending', '1') == 1 then
  redis.call('XADD', KEYS[10], '*', 'a', string.match(KEYS[1], '{acct:(.-)}'))
end
return {1, balance}
