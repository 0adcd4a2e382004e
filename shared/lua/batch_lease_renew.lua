-- batch_lease_renew: extend a batch's lease, only while this batch worker holds it.
-- A short ttl hands the batch over at once (shutdown, a finished run).
-- KEYS: the batch's lease key
-- ARGV: owner (batch worker id), ttl ms
-- Returns 1 when renewed; 0 when another worker holds the lease or it lapsed.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
