#!lua flags=
-- save_schedule.lua: insert or replace a stored schedule (Backend.save_schedule).
-- KEYS[1]  schedules  HASH  name -> JSON {spec, template, next_fire, updated_at}
-- KEYS[2]  lease:<fence name> (HASH o owner, n token, u until), only with a fence
-- ARGV[1] name  [2] JSON  [3] now  [4] fence owner  [5] fence token
-- ARGV[6]  channel to PUBLISH after an unfenced save ('' for none): a schedule saved by
--          a user may fire before the time the scheduler sleeps until
-- Touches  schedules.
-- Returns  1; or the error 'SQ_LEASE_LOST ...' having written nothing, unless the fence
--          is the current holder of its lease at now (fence_holds in _lease.lua, prepended).
-- The JSON is written by Python and never decoded here (cjson would round its numbers).

if #KEYS == 2 and not fence_holds(KEYS[2], ARGV[4], ARGV[5], tonumber(ARGV[3])) then
  return redis.error_reply('SQ_LEASE_LOST the fence is not the current holder of its lease')
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[6], '1') end
return 1
