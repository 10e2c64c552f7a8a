#!lua flags=allow-oom
-- forget_leases.lua: delete leases that ended (Backend.forget_leases).
-- KEYS[1]  prefix  'sq:{<queue>}:', to build each lease:<name> key and the quarantine
--          set (same hash tag)
-- KEYS[2]  leases  ZSET  every lease name, score 0
-- ARGV[1], ARGV[2]  ZRANGEBYLEX bounds of the names with the caller's prefix
-- ARGV[3]  before: a lease whose until is earlier ended (a released one holds until 0)
-- ARGV[4]  limit
-- Touches  lease:<name> (DEL), leases (ZREM), quarantine (ZADD 'lease:<name>').
-- Returns  {how many were deleted, skipped}: a name whose lease hash is missing leaves
--          leases (stale); one whose hash is not a lease (read_lease in _lease.lua) is
--          never deleted: its name leaves leases for the quarantine set, so no listing
--          meets it again; or the error 'SQ_CORRUPT ...' having written nothing.

local before, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local problem = type_problem(KEYS[2], 'zset') or type_problem(KEYS[1] .. 'quarantine', 'zset')
if problem then return redis.error_reply(problem) end
local ended, stale, bad, skipped = {}, {}, {}, {}
for _, name in ipairs(redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], ARGV[2])) do
  if #ended >= limit then break end
  local key = KEYS[1] .. 'lease:' .. name
  local lease, why = read_lease(key)
  if not lease then
    bad[#bad + 1] = name
    skipped[#skipped + 1] = 'lease:' .. name
    skipped[#skipped + 1] = why
  elseif not lease[1] then
    stale[#stale + 1] = name
    skipped[#skipped + 1] = 'lease:' .. name
    skipped[#skipped + 1] = 'missing'
  elseif tonumber(lease[3]) < before then
    ended[#ended + 1] = name
  end
end
for _, name in ipairs(ended) do
  redis.call('DEL', KEYS[1] .. 'lease:' .. name)
  redis.call('ZREM', KEYS[2], name)
end
for _, name in ipairs(stale) do redis.call('ZREM', KEYS[2], name) end
if #bad > 0 then
  local when = clock_text()
  for _, name in ipairs(bad) do
    redis.call('ZREM', KEYS[2], name)
    redis.call('ZADD', KEYS[1] .. 'quarantine', when, 'lease:' .. name)
  end
end
return {#ended, skipped}
