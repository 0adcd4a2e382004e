-- batch_write_unrun: write a page of lines that never ran (the completion window passed) as error
-- lines, once: only while the batch's cursor is still where the caller read the page, and the cursor
-- moves past the page in the same step, so two writers (a lapsed lease) cannot both write it.
-- KEYS: batch hash, errors list
-- ARGV: the cursor the page was read at (its first line), the next cursor, the byte offset in the
--       input file where the next cursor's line starts, the error lines...
-- Returns 1 when written; 0 when the cursor had moved.
if tonumber(redis.call('HGET', KEYS[1], 'cursor') or '0') ~= tonumber(ARGV[1]) then return 0 end
local bytes = 0
for i = 4, #ARGV do
  redis.call('RPUSH', KEYS[2], ARGV[i])
  bytes = bytes + string.len(ARGV[i]) + 1
end
redis.call('HINCRBY', KEYS[1], 'failed', #ARGV - 3)
redis.call('HINCRBY', KEYS[1], 'error_bytes', bytes)
redis.call('HSET', KEYS[1], 'cursor', ARGV[2], 'cursor_offset', ARGV[3])
return 1
