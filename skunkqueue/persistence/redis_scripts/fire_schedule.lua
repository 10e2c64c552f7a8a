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
-- Returns     1 when fired; 0, having written nothing, if the schedule is gone or its
--             revision is not the one read (rules.unchanged_since); or the error
--             'SQ_LEASE_LOST ...', having written nothing, unless the fence holds its
--             lease (fence_holds in _lease.lua, prepended after _common.lua).

local now, name = tonumber(ARGV[1]), ARGV[4]
if not fence_holds(KEYS[7], ARGV[2], ARGV[3], now) then
  return redis.error_reply('SQ_LEASE_LOST the fence is not the current holder of its lease')
end
if redis.call('HEXISTS', KEYS[8], name) == 0 then return 0 end
if tonumber(redis.call('HGET', KEYS[9], name) or '0') ~= tonumber(ARGV[5]) then return 0 end
put_jobs(now, tonumber(ARGV[7]), 8)
flush()
wake_scheduler()
redis.call('HSET', KEYS[8], name, ARGV[6])
redis.call('HINCRBY', KEYS[9], name, 1)
return 1
