#!lua flags=
-- save_schedule.lua: insert or replace a stored schedule (Backend.save_schedule).
-- KEYS[1]  schedules  HASH  name -> JSON {spec, template, next_fire, updated_at}
-- KEYS[2]  schedrev   HASH  name -> revision (kept when a schedule is removed, so a name
--          stored again never reuses one; a schedule without one reads as revision 0)
-- KEYS[3]  lease:<fence name> (HASH o owner, n token, u until), only with a fence
-- ARGV[1] name  [2] JSON  [3] now  [4] fence owner  [5] fence token
-- ARGV[6]  channel to PUBLISH after an unfenced save ('' for none): a schedule saved by
--          a user may fire before the time the scheduler sleeps until
-- ARGV[7]  expected revision ('' for none): write only if the revision a reader would see
--          now is this one, a schedule that does not exist reading as 0
--          (rules.expected_revision_holds)
-- Touches  schedules, schedrev (HINCRBY: the name's next revision).
-- Returns  1 when written, 0 (having written nothing) when the expected revision does not
--          hold; or the error 'SQ_LEASE_LOST ...' having written nothing, unless the fence
--          is the current holder of its lease at now (fence_holds in _lease.lua, prepended).
-- The JSON is written by Python and never decoded here (cjson would round its numbers).

if #KEYS == 3 and not fence_holds(KEYS[3], ARGV[4], ARGV[5], tonumber(ARGV[3])) then
  return redis.error_reply('SQ_LEASE_LOST the fence is not the current holder of its lease')
end
-- Both writes below can only fail on what is read here: checked first, so neither
-- happens without the other.
local stored = redis.pcall('HEXISTS', KEYS[1], ARGV[1])
if type(stored) == 'table' then return redis.error_reply(type_problem(KEYS[1], 'hash')) end
local revision = redis.pcall('HGET', KEYS[2], ARGV[1])
if type(revision) == 'table' then return redis.error_reply(type_problem(KEYS[2], 'hash')) end
if revision and not is_count(revision) then
  return redis.error_reply('SQ_CORRUPT ' .. KEYS[2] .. ' field ' .. ARGV[1]
    .. ' is not an integer; nothing was written')
end
if ARGV[7] ~= '' then
  local seen = 0
  if stored == 1 then seen = tonumber(revision or '0') end
  if seen ~= tonumber(ARGV[7]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[6], '1') end
return 1
