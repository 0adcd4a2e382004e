-- catalog_put: make a catalog document the current version, if the current one is the one expected.
-- KEYS: the catalog hash (keys.CATALOG)
-- ARGV: expected current version (0: the store is empty), the new version, the document (JSON),
--       the channel announcing it (keys.CATALOG_CHANNEL)
-- Returns {1, new version} when stored (and announced); {0, current version} otherwise: someone else
-- changed the catalog first, nothing is written (optimistic concurrency, If-Match).
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then
  return {0, current}
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'document', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return {1, tonumber(ARGV[2])}
