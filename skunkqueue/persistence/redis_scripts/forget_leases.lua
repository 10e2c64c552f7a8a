#!lua flags=
-- forget_leases.lua: delete leases that ended (Backend.forget_leases).
-- KEYS[1]  prefix  'sq:{<queue>}:', to build each lease:<name> key (same hash tag)
-- KEYS[2]  leases  ZSET  every lease name, score 0
-- ARGV[1], ARGV[2]  ZRANGEBYLEX bounds of the names with the caller's prefix
-- ARGV[3]  before: a lease whose until is earlier ended (a released one holds until 0)
-- ARGV[4]  limit
-- Touches  lease:<name> (DEL), leases (ZREM).
-- Returns  how many were deleted.

local before, limit, forgotten = tonumber(ARGV[3]), tonumber(ARGV[4]), 0
for _, name in ipairs(redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], ARGV[2])) do
  if forgotten >= limit then break end
  local key = KEYS[1] .. 'lease:' .. name
  if tonumber(redis.call('HGET', key, 'u') or '0') < before then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[2], name)
    forgotten = forgotten + 1
  end
end
return forgotten
