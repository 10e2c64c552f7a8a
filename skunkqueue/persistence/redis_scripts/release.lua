#!lua flags=
-- release.lua: hand back the running jobs of an owner known dead (Backend.release).
-- KEYS[1..6]  prefix, counts, scheduled, running, expiry, seq (see _common.lua; job keys
--             j:<id>, ready:<route> and wake:<route> are built from the prefix)
-- KEYS[7]     held:<owner> (SET)
-- ARGV[1] owner  [2] now  [3] the JobRecord default max_deliveries  [4] default result_ttl
-- ARGV[5] limit: ids of held:<owner> looked at in this call
-- ARGV[6..]   ids of the jobs that had started (their delivery counts)
-- Touches     j:<id>, running, held:<owner> (every id looked at leaves it), counts, then
--             ready:<route> + wake:<route> (queued again) or expiry (error: deliveries lost).
-- Returns     {more, id, new state, id, new state, ...}: more is 1 when held:<owner> had
--             limit ids or more, and the caller calls again for the rest.

local owner, now, limit = ARGV[1], ARGV[2], tonumber(ARGV[5])
local started = {}
for k = 6, #ARGV do started[ARGV[k]] = true end
-- At most limit ids, whatever the set's size: the call's work stays bounded.
local ids = redis.call('SRANDMEMBER', KEYS[7], limit)
local out = {0}
if #ids >= limit then out[1] = 1 end
for _, id in ipairs(ids) do
  local key = job_key(id)
  local rec = redis.call('HMGET', key, 's', 'o', 'r', 'q', 't', 'd', 'a', 'm', 'k')
  if rec[1] == 'running' and rec[2] == owner then
    local route = rec[3]
    let_go(key, id, route, KEYS[7])
    local state = 'queued'
    if started[id] then
      state = recover(key, id, route, rec[4], rec[5], rec[6], rec[7], rec[8] or ARGV[3],
        rec[9] or ARGV[4], now)
    else
      hand_back(key, id, route, rec[4], rec[5])
    end
    out[#out + 1] = id
    out[#out + 1] = state
  else
    redis.call('SREM', KEYS[7], id)  -- no longer this owner's: the entry is stale
  end
end
flush()
return out
