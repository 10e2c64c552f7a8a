#!lua flags=
-- fire_schedule.lua: the leader fires ticks of a schedule (Backend.fire_schedule): their
-- jobs stored as put stores them and the schedule moved on, in this one script run, so a
-- tick is never stored without the advance past it, nor the advance without the tick.
-- KEYS[1..6]  prefix, counts, scheduled, running, expiry, seq (see _common.lua)
-- KEYS[7]     lease:<fence name> (HASH o owner, n token, u until)
-- KEYS[8]     schedules  HASH  name -> JSON {spec, template, next_fire, updated_at}
-- KEYS[9]     schedrev   HASH  name -> revision (kept when a schedule is removed)
-- ARGV[1] now  [2] fence owner  [3] fence token  [4] schedule name
-- ARGV[5]     the revision the leader read
-- ARGV[6]     the schedule's JSON as the leader read it, with next_fire and updated_at moved
--             on (written by Python and never decoded here: cjson would round its numbers)
-- ARGV[7]     number of jobs, then the jobs as put.lua takes them (put_jobs in _common.lua)
-- Touches     what put touches, then schedules and schedrev.
-- Returns     {1 when fired, skipped}; {0, skipped}, having written nothing, if the
--             schedule is gone or its revision is not the one read (rules.unchanged_since);
--             or the error 'SQ_LEASE_LOST ...', having written nothing, unless the fence
--             holds its lease (fence_holds in _lease.lua, prepended after _common.lua); or
--             'SQ_CORRUPT ...' having written nothing.

local now, name = tonumber(ARGV[1]), ARGV[4]
if not fence_holds(KEYS[7], ARGV[2], ARGV[3], now) then
  return redis.error_reply('SQ_LEASE_LOST the fence is not the current holder of its lease')
end
local stored = redis.pcall('HEXISTS', KEYS[8], name)
if type(stored) == 'table' then return redis.error_reply(type_problem(KEYS[8], 'hash')) end
local revision = redis.pcall('HGET', KEYS[9], name)
if type(revision) == 'table' then return redis.error_reply(type_problem(KEYS[9], 'hash')) end
if revision and not is_count(revision) then
  return redis.error_reply('SQ_CORRUPT ' .. KEYS[9] .. ' field ' .. name
    .. ' is not an integer; nothing was written')
end
if stored == 0 or tonumber(revision or '0') ~= tonumber(ARGV[5]) then return {0, skipped} end
local _, refused = put_jobs(now, tonumber(ARGV[7]), 8)
if refused then return redis.error_reply(refused) end
known[KEYS[8]], known[KEYS[9]] = true, true
write('HSET', KEYS[8], name, ARGV[6])
write('HINCRBY', KEYS[9], name, 1)
local problem = commit()
if problem then return redis.error_reply(problem) end
wake_scheduler()
return {1, skipped}
