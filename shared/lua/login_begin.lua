-- login_begin: admit one sign-in attempt, or say how long it must wait; counted as failed until login_finish.
-- Per scope (an email, a client address): after `free` failures, each attempt waits
-- min(max_delay, base_delay * 2^(failures - free)) after the last failure; at most `max_inflight`
-- passwords of the scope are verified at once. Refusals are not counted. The failure is counted before
-- the password is checked, so concurrent guesses cannot all pass a check that reads before it writes.
-- KEYS: per scope, its failures hash (fails, last ms) and its in-flight zset (attempt id -> start ms)
--       (all under the {login} hash tag)
-- ARGV: attempt id, stale ms (an in-flight entry this old is a verifier that died), then per scope:
--       free failures, base delay ms, max delay ms, max in flight, TTL ms of its failures
-- Returns {1, 0} admitted, {0, wait ms} refused.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, stale = ARGV[1], tonumber(ARGV[2])
local scopes = #KEYS / 2
local wait = 0
for i = 1, scopes do
  local fails_key, inflight_key = KEYS[2 * i - 1], KEYS[2 * i]
  local p = 2 + (i - 1) * 5
  local free, base, cap, max_inflight = tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3]),
                                        tonumber(ARGV[p + 4])
  redis.call('ZREMRANGEBYSCORE', inflight_key, '-inf', now - stale)
  local state = redis.call('HMGET', fails_key, 'fails', 'last')
  local fails, last = tonumber(state[1] or '0'), tonumber(state[2] or '0')
  if fails >= free then
    local delay = math.min(cap, base * 2 ^ (fails - free))
    wait = math.max(wait, last + delay - now)
  end
  if redis.call('ZCARD', inflight_key) >= max_inflight then wait = math.max(wait, 1000) end
end
if wait > 0 then return {0, math.ceil(wait)} end
for i = 1, scopes do
  local fails_key, inflight_key = KEYS[2 * i - 1], KEYS[2 * i]
  local ttl = tonumber(ARGV[2 + (i - 1) * 5 + 5])
  redis.call('HINCRBY', fails_key, 'fails', 1)
  redis.call('HSET', fails_key, 'last', now)
  redis.call('PEXPIRE', fails_key, ttl)
  redis.call('ZADD', inflight_key, now, id)
  redis.call('PEXPIRE', inflight_key, stale)
end
return {1, 0}
