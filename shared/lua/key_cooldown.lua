-- key_cooldown: a pool key answered 429; every worker of the node skips it until its cooldown ends.
-- The cooldown is Google's RetryInfo.retryDelay when it sent one, else exponential backoff by the key's
-- strikes (consecutive spells). 429s of one spell (other workers' requests in flight on the same key)
-- extend the spell to their delay but count no new strike; a key well clear of its last spell (longer
-- than the longest backoff) starts again at one strike.
-- KEYS[1] the node's key state hash
-- ARGV: label, now ms, delay ms (-1: Google named none), backoff base ms, backoff max ms, channel
-- Returns {cool_until ms, strikes}
local state, label = KEYS[1], ARGV[1]
local now, delay = tonumber(ARGV[2]), tonumber(ARGV[3])
local base, longest = tonumber(ARGV[4]), tonumber(ARGV[5])
local cool_until = tonumber(redis.call('HGET', state, label .. ':cool_until') or '0')
local strikes = tonumber(redis.call('HGET', state, label .. ':strikes') or '0')
if cool_until <= now then
  if now - cool_until > longest then strikes = 0 end
  strikes = strikes + 1
end
if delay < 0 then delay = math.floor(math.min(longest, base * 2 ^ (strikes - 1))) end
if now + delay > cool_until then cool_until = now + delay end
redis.call('HSET', state, label .. ':cool_until', cool_until, label .. ':strikes', strikes,
           label .. ':limited_at', now)
redis.call('HINCRBY', state, label .. ':rate_limited', 1)
redis.call('PUBLISH', ARGV[6], label)
return {cool_until, strikes}
