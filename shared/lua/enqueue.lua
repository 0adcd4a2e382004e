-- enqueue: put an arq job on a bounded node queue, in one round trip.
-- The queue's member is the serialized job itself, so the worker's pop hands it the job
-- (no second round trip to fetch it); the job key holds the same bytes, so the job can be
-- found by its id (withdraw.lua, the batch worker's probe) while it waits.
-- KEYS: job key (arq:job:<id>), queue zset, [holds hash of the paying account]
-- ARGV: serialized job, expiry (ms), score (enqueue time ms), job id, max queue depth (0 = unbounded),
--       [request id whose hold must exist]
-- With the holds hash, the job's first "hold_micro":-1 (the placeholder the dispatcher puts
-- first in every job) becomes the amount actually held, so the worker can clamp the request's
-- output to what its hold covers without another round trip.
-- Returns 1 when queued, 0 when the queue is full (backpressure: the caller answers 503),
-- -1 when the request holds no credits (reserve.lua, run just before in the same pipeline, refused it).
-- With the third key this script spans two hash slots: the queue path needs one Redis primary.
local job = ARGV[1]
if KEYS[3] then
  local hold = redis.call('HGET', KEYS[3], ARGV[6])
  if not hold then return -1 end
  local placeholder = '"hold_micro":-1'
  local first, last = string.find(job, placeholder, 1, true)
  if first then
    job = string.sub(job, 1, first - 1) .. '"hold_micro":' .. string.match(hold, '^(%d+)') .. string.sub(job, last + 1)
  end
end
local limit = tonumber(ARGV[5])
if limit > 0 and redis.call('ZCARD', KEYS[2]) >= limit then return 0 end
redis.call('SET', KEYS[1], job, 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], job)
return 1
