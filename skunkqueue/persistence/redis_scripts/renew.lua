#!lua flags=
-- renew.lua: extend the leases of running jobs an owner holds (Backend.renew).
-- KEYS[1..6]  prefix, counts, scheduled, running, expiry, seq (see _common.lua; job keys
--             j:<id> are built from the prefix)
-- KEYS[7]     held:<owner> (SET)
-- ARGV[1] owner  [2] lease_until (now + lease, added by Python)
-- ARGV[3] '1' when ids follow in ARGV[4..], '0' for every job the owner holds
-- Touches     j:<id> (l), running, held:<owner> (drops ids it no longer holds),
--             PUBLISH wake:scheduler when a lease now ends earliest (lease=0 from a
--             supervisor that saw its worker die: the jobs are recovered at once).
-- Returns     the ids the owner holds.

local owner, lease_until = ARGV[1], ARGV[2]
local ids
if ARGV[3] == '1' then
  ids = {}
  for k = 4, #ARGV do ids[#ids + 1] = ARGV[k] end
else
  ids = redis.call('SMEMBERS', KEYS[7])
end
local held = {}
for _, id in ipairs(ids) do
  local key = job_key(id)
  local rec = redis.call('HMGET', key, 's', 'o')
  if rec[1] == 'running' and rec[2] == owner then
    due_at(tonumber(lease_until))
    redis.call('HSET', key, 'l', lease_until)
    redis.call('ZADD', RUNNING, lease_until, id)
    held[#held + 1] = id
  elseif ARGV[3] == '0' then
    redis.call('SREM', KEYS[7], id)
  end
end
wake_scheduler()
return held
