-- login_finish: the outcome of an attempt login_begin admitted (which counted it as a failure).
-- KEYS: as login_begin's (per scope: failures hash, in-flight zset)
-- ARGV: attempt id, outcome: 'failed' (the count stands; the next delay runs from now),
--       'succeeded' (the first scope, the email, is cleared; the others take the count back),
--       'not_checked' (the password was not verified: every scope takes the count back)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, outcome = ARGV[1], ARGV[2]
for i = 1, #KEYS / 2 do
  local fails_key, inflight_key = KEYS[2 * i - 1], KEYS[2 * i]
  redis.call('ZREM', inflight_key, id)
  if outcome == 'failed' then
    if redis.call('EXISTS', fails_key) == 1 then redis.call('HSET', fails_key, 'last', now) end
  elseif outcome == 'succeeded' and i == 1 then
    redis.call('DEL', fails_key)
  elseif redis.call('EXISTS', fails_key) == 1 and tonumber(redis.call('HGET', fails_key, 'fails') or '0') > 0 then
    redis.call('HINCRBY', fails_key, 'fails', -1)
  end
end
return 1
