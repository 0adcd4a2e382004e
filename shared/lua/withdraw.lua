-- withdraw: take back a job nobody has claimed yet.
-- KEYS: queue zset, job key (arq:job:<id>)     ARGV: job id
-- Returns 1 when withdrawn; 0 when a worker already popped it (its payload is left for that worker).
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
