#!lua flags=no-writes
-- stats.lua: counts of unexpired jobs per (state, route) and the earliest waiting eta
-- (Backend.stats). Read-only (so it runs even when Redis is out of memory); a script so
-- that the counts, the expired records not yet deleted and the eta come from one instant.
-- KEYS[1..6]  prefix, counts, scheduled, running, expiry, seq (see _common.lua; job keys
--             j:<id> are built from the prefix)
-- ARGV[1]     now
-- Returns     {counts as HGETALL, {'<state>|<route>' of each record past its expiry that
--             sweep has not deleted yet}, earliest waiting eta ('' if none)}

local stale = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', ARGV[1])) do
  local rec = redis.call('HMGET', job_key(id), 's', 'r')
  if rec[1] then stale[#stale + 1] = rec[1] .. '|' .. rec[2] end
end
local waiting = redis.call('ZRANGE', SCHEDULED, 0, 0, 'WITHSCORES')[2] or ''
return {redis.call('HGETALL', COUNTS), stale, waiting}
