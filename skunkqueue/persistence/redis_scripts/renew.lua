#!lua flags=allow-oom
-- renew.lua: extend the leases of running jobs an owner holds (Backend.renew).
-- KEYS[1..6]  prefix, counts, scheduled, running, expiry, seq (see _common.lua; job keys
--             j:<id> are built from the prefix)
-- KEYS[7]     held:<owner> (SET)
-- ARGV[1] owner  [2] lease_until (now + lease, added by Python)
-- ARGV[3] '1' when ids follow in ARGV[4..], '0' for every job the owner holds
-- Touches     j:<id> (l), running, held:<owner> (drops ids it no longer holds),
--             quarantine, PUBLISH wake:scheduler when a lease now ends earliest.
-- Returns     {the ids the owner holds, skipped}; or the error 'SQ_CORRUPT ...' having
--             written nothing. Walking held:<owner>, an id whose record is missing, not
--             this owner's running job or malformed leaves the set (a malformed record
--             for the quarantine); an id the caller named is only left out.

local owner, lease_until, walking = ARGV[1], ARGV[2], ARGV[3] == '0'
local ids
if walking then
  ids = redis.call('SMEMBERS', KEYS[7])
else
  ids = {}
  for k = 4, #ARGV do ids[#ids + 1] = ARGV[k] end
end
local held, seen = {}, {}
for _, id in ipairs(ids) do
  local rec, why = read_job(id, {'s', 'o'})
  if rec and rec.s == 'running' and rec.o == owner then
    if not seen[id] then
      seen[id] = true
      due_at(tonumber(lease_until))
      write('HSET', job_key(id), 'l', lease_until)
      zadd_later(RUNNING, lease_until, id)
      held[#held + 1] = id
    end
  elseif walking then
    if rec then
      srem_later(KEYS[7], id)
      skip('j:' .. id, 'not running for ' .. owner .. ' (state ' .. rec.s .. ')')
    else
      set_aside(KEYS[7], id, id, why, true)
    end
  elseif not rec and why ~= MISSING then
    skip('j:' .. id, why)
  end
end
local problem = commit()
if problem then return redis.error_reply(problem) end
wake_scheduler()
return {held, skipped}
