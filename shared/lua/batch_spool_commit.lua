-- batch_spool_commit: a part of a batch's output (or error) lines is in the blob store: take those
-- lines off the Redis list and name the part, once. Only while the part count is what the caller
-- read before writing the part, so two writers (a lapsed lease) cannot both move the same lines:
-- the loser's part is not named (it deletes it) and its lines stay for the winner's next part.
-- KEYS: the lines list, the parts list
-- ARGV: the parts count read, the lines the part holds (the list's first ones), the part's blob key
-- Returns 1 when committed; 0 when another part was committed meanwhile.
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[1]) then return 0 end
redis.call('LTRIM', KEYS[1], tonumber(ARGV[2]), -1)
redis.call('RPUSH', KEYS[2], ARGV[3])
return 1
