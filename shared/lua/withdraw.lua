-- withdraw: take back a job nobody has claimed yet.
-- KEYS: queue zset, job key (arq:job:<id>: the job's bytes, which are its queue member)
-- Returns 1 when withdrawn; 0 when a worker already popped it (or it lapsed).
local job = redis.call('GET', KEYS[2])
if job and redis.call('ZREM', KEYS[1], job) == 1 then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
