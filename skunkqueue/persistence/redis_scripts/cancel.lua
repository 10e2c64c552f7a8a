#!lua flags=allow-oom
-- cancel.lua: cancel jobs that have not started (Backend.cancel).
-- KEYS[1..6]  prefix, counts, scheduled, running, expiry, seq (see _common.lua; job keys
--             j:<id> and ready:<route> are built from the prefix)
-- ARGV[1] now  [2] error JSON {"reason": ...}  [3] the JobRecord default result_ttl
-- ARGV[4..]   job ids
-- Touches     j:<id>, scheduled or ready:<route>, expiry, counts; for a queued job with
--             a concurrency limit parked:<event> (out of it if it was held back, and the
--             next held-back job of the event let through: see _common.lua).
-- Returns     {one 1/0 per id, skipped}: 1 where the job was scheduled, queued or retrying
--             and its record well-formed (a malformed one is left as it is and named in
--             skipped); or the error 'SQ_CORRUPT ...' having written nothing.

local now, reason, default_ttl = ARGV[1], ARGV[2], ARGV[3]
local answers, done = {}, {}
for k = 4, #ARGV do
  local id = ARGV[k]
  local rec, why = nil, nil
  if not done[id] then  -- an id given twice is cancelled once
    rec, why = read_job(id, {'s', 'r', 'q', 'k', 'e', 'cc'})
  end
  local state = rec and rec.s
  if state == 'scheduled' or state == 'retrying' or state == 'queued' then
    done[id] = true
    unlink(id, state, rec.r, rec.q, nil)
    if state == 'queued' and rec.cc then cancelled_gated(rec.e, member(rec.q, id)) end
    local expires = plus(now, rec.k or default_ttl)
    write('HSET', job_key(id), 's', 'cancelled', 'er', reason, 'f', now, 'x', expires)
    zadd_later(EXPIRY, expires, id)
    count('cancelled', rec.r, 1)
    answers[#answers + 1] = 1
  else
    if why and why ~= MISSING then skip('j:' .. id, why) end
    answers[#answers + 1] = 0
  end
end
local problem = commit()
if problem then return redis.error_reply(problem) end
return {answers, skipped}
