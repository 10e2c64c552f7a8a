#!lua flags=allow-oom
-- release.lua: hand back the running jobs of an owner known dead (Backend.release).
-- KEYS[1..6]  prefix, counts, scheduled, running, expiry, seq (see _common.lua; job keys
--             j:<id>, ready:<route> and wake:<route> are built from the prefix)
-- KEYS[7]     held:<owner> (SET)
-- ARGV[1] owner  [2] now  [3] the JobRecord default max_deliveries  [4] default result_ttl
-- ARGV[5] limit: ids of held:<owner> looked at in this call
-- ARGV[6..]   ids of the jobs that had started (their delivery counts)
-- Touches     j:<id>, running, held:<owner> (every id looked at leaves it), counts,
--             running_by_event, parked:<event> (one held-back job let through per job
--             handed back: see finish.lua), then
--             ready:<route> + wake:<route> (queued again) or expiry (error: deliveries
--             lost); quarantine (an id whose record is malformed).
-- Returns     {more, {id, new state, ...}, skipped}: more is 1 when held:<owner> had limit
--             ids or more, and the caller calls again for the rest; skipped names the ids
--             that were not this owner's running jobs (stale entries) and the malformed
--             records set aside; or the error 'SQ_CORRUPT ...' having written nothing.

local owner, now, limit = ARGV[1], ARGV[2], tonumber(ARGV[5])
local started = {}
for k = 6, #ARGV do started[ARGV[k]] = true end
-- At most limit ids, whatever the set's size: the call's work stays bounded.
local ids = redis.call('SRANDMEMBER', KEYS[7], limit)
local more, out = 0, {}
if #ids >= limit then more = 1 end
for _, id in ipairs(ids) do
  local key = job_key(id)
  local rec, why = read_job(id, {'s', 'o', 'r', 'q', 't', 'd', 'a', 'm', 'k', 'e'})
  if rec and rec.s == 'running' and rec.o == owner then
    let_go(key, id, rec.r, KEYS[7])
    left_running(rec.e)
    local state = 'queued'
    if started[id] then
      state = recover(key, id, rec.r, rec.q, rec.t, rec.d, rec.a, rec.m or ARGV[3],
        rec.k or ARGV[4], now)
    else
      hand_back(key, id, rec.r, rec.q, rec.t, rec.d)
    end
    out[#out + 1] = id
    out[#out + 1] = state
  elseif rec then
    srem_later(KEYS[7], id)  -- no longer this owner's: the entry is stale
    skip('j:' .. id, 'not running for ' .. owner .. ' (state ' .. rec.s .. ')')
  else
    set_aside(KEYS[7], id, id, why, true)
  end
end
local problem = commit()
if problem then return redis.error_reply(problem) end
return {more, out, skipped}
