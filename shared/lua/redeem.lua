-- redeem: claim one use of a redemption code, atomically across every gateway; throttle wrong guesses.
-- A code is claimed here before it is credited (shared/redemption.py), so of N concurrent redemptions
-- of a code with U uses, exactly min(N, U) get a use number. Only unknown codes count as wrong
-- guesses (a used-up, disabled or expired code is a real one: nobody finds those by guessing); a
-- scope (the account, the client address) that tried `limit` unknown codes within the window is
-- refused until its window ends, before the code is even looked up.
-- A use handed back (its credit could not be recorded: shared/redemption.py) is claimed again first.
-- A claimed use is noted in the claims hash (who claimed it, when) until the gateway has recorded its
-- credit; one a dead gateway left there is recorded by the archiver's reconciler
-- (worker/archiver/redemption_reconcile.py).
-- KEYS: code hash, its handed-back uses list, the claims hash, then per scope its failures counter
--       (all under {redeem})
-- ARGV: now (unix s), window ms, the claiming account id, then per scope its limit (ARGV[i] for KEYS[i])
-- Returns {1, use number, credits micro} claimed; {0, 0, 0} a known code with no use left (used up,
-- disabled, expired); {-1, 0, 0} an unknown code (counted); {-2, retry ms, 0} throttled.
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 4, #KEYS do
  local fails = tonumber(redis.call('GET', KEYS[i]) or '0')
  if fails >= tonumber(ARGV[i]) then
    local ttl = redis.call('PTTL', KEYS[i])
    return {-2, ttl > 0 and ttl or window, 0}
  end
end
local code = redis.call('HMGET', KEYS[1], 'credits_micro', 'uses', 'used', 'expires_at', 'disabled')
if not code[1] then
  for i = 4, #KEYS do
    if redis.call('INCR', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], window) end
  end
  return {-1, 0, 0}
end
local uses, used, expires = tonumber(code[2]), tonumber(code[3] or '0'), tonumber(code[4] or '0')
if code[5] == '1' or (expires > 0 and now >= expires) then return {0, 0, 0} end
local use = redis.call('LPOP', KEYS[2])
if use then
  use = tonumber(use)
elseif used >= uses then
  return {0, 0, 0}
else
  use = redis.call('HINCRBY', KEYS[1], 'used', 1)
end
local code_hash = string.match(KEYS[1], ':code:(%x+)$')
redis.call('HSET', KEYS[3], code_hash .. ':' .. use, ARGV[3] .. ':' .. ARGV[1])
return {1, use, tonumber(code[1])}
