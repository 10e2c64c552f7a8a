#!lua flags=no-writes
-- stats.lua: counts of unexpired jobs per (state, route) and the earliest waiting eta
-- (Backend.stats). Read-only (so it runs even when Redis is out of memory); a script so
-- that the counts, the expired records not yet deleted and the eta come from one instant.
-- KEYS[1..6]  prefix, counts, scheduled, running, expiry, seq (see _common.lua; job keys
--             j:<id> are built from the prefix)
-- ARGV[1]     now
-- Returns     {counts as HGETALL (fields whose count is not an integer left out),
--             {'<state>|<route>' of each record past its expiry that sweep has not
--             deleted yet}, earliest waiting eta ('' if none), how many records are
--             quarantined, skipped (expired records that cannot be read, bad counts)}

local counts = {}
local got = redis.pcall('HGETALL', COUNTS)
if got.err then
  skip(COUNTS, 'not a hash')
  got = {}
end
for k = 1, #got, 2 do
  if is_count(got[k + 1]) then
    counts[#counts + 1] = got[k]
    counts[#counts + 1] = got[k + 1]
  else
    skip(COUNTS, 'field ' .. got[k] .. ' is not an integer')
  end
end
local stale = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', ARGV[1])) do
  local rec, why = read_job(id, {'s', 'r'})
  if rec then
    stale[#stale + 1] = rec.s .. '|' .. rec.r
  else
    skip('j:' .. id, why)
  end
end
local waiting = redis.call('ZRANGE', SCHEDULED, 0, 0, 'WITHSCORES')[2] or ''
local quarantined = redis.pcall('ZCARD', QUARANTINE)
if type(quarantined) ~= 'number' then quarantined = 0 end
return {counts, stale, waiting, quarantined, skipped}
