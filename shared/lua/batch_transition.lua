-- batch_transition: move a batch to a new status, only from one of the statuses allowed.
-- A cancel (gateway) and the batch worker's own steps race on the status; the loser learns the winner's.
-- KEYS: batch hash
-- ARGV: new status, the allowed current statuses..., '--', then field/value pairs set with it
-- Returns 'ok' when moved; the current status when it is not an allowed one; nil when there is no batch.
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return false end
local i = 2
local ok = false
while ARGV[i] ~= '--' do
  if ARGV[i] == cur then ok = true end
  i = i + 1
end
if not ok then return cur end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
i = i + 1
while i < #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
return 'ok'
