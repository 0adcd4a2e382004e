-- batch_finish_line: write one batch line's outcome, exactly once.
-- The line is written only while it is in flight: its output (or error) line is appended, the
-- batch's counters move, and the line leaves the in-flight record in the same step, so a resumed
-- batch worker that finishes the same line again changes nothing. The line's stored reply goes too.
-- KEYS: batch hash, inflight hash, output list, errors list, the line's result key
-- ARGV: line no, kind ('ok': output line | 'err': error line | 'none': dropped, nothing written),
--       the line to write, charge (micro-credits, added to the batch's charged_micro)
-- Returns 1 when written; 0 when the line was not in flight (written already).
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[2] == 'ok' then
  redis.call('RPUSH', KEYS[3], ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'completed', 1)
  redis.call('HINCRBY', KEYS[1], 'output_bytes', string.len(ARGV[3]) + 1)
elseif ARGV[2] == 'err' then
  redis.call('RPUSH', KEYS[4], ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'failed', 1)
  redis.call('HINCRBY', KEYS[1], 'error_bytes', string.len(ARGV[3]) + 1)
end
if tonumber(ARGV[4]) > 0 then redis.call('HINCRBY', KEYS[1], 'charged_micro', ARGV[4]) end
redis.call('DEL', KEYS[5])
return 1
