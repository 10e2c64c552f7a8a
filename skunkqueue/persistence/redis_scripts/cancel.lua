#!lua flags=allow-oom
-- cancel.lua: cancel jobs that have not started, and with ARGV[4] '1' running ones too
-- (Backend.cancel, rules.cancel).
-- KEYS[1..6]  prefix, counts, scheduled, running, expiry, seq (see _common.lua; job keys
--             j:<id>, ready:<route> and held:<owner> are built from the prefix)
-- ARGV[1] now  [2] error JSON {"reason": ...}  [3] the JobRecord default result_ttl
-- ARGV[4] '1': cancel running jobs as well, '0': leave them
-- ARGV[5..]   job ids
-- Touches     j:<id>, scheduled or ready:<route>, or running and held:<owner> (a running
--             job's owner and lease are cleared, and its event's running count given
--             back), expiry, counts; for a queued job with a concurrency limit
--             parked:<event> (out of it if it was held back); a freed slot lets the next
--             held-back job of the event through (see _common.lua).
-- Returns     {one 1/0 per id, skipped}: 1 where the job was scheduled, queued or retrying
--             (or running, with ARGV[4] '1') and its record well-formed (a malformed one
--             is left as it is and named in skipped); or the error 'SQ_CORRUPT ...'
--             having written nothing.

local now, reason, default_ttl, running = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local answers, done = {}, {}
for k = 5, #ARGV do
  local id = ARGV[k]
  local rec, why = nil, nil
  if not done[id] then  -- an id given twice is cancelled once
    rec, why = read_job(id, {'s', 'r', 'q', 'k', 'o', 'e', 'cc'})
  end
  local state = rec and rec.s
  if state == 'scheduled' or state == 'retrying' or state == 'queued'
    or (running and state == 'running') then
    done[id] = true
    local key = job_key(id)
    if state == 'running' then
      -- The job leaves running here, as in finish, sweep and release.
      let_go(key, id, rec.r, rec.o and held_key(rec.o))
      left_running(rec.e)
    else
      unlink(id, state, rec.r, rec.q, nil)
      if state == 'queued' and rec.cc then cancelled_gated(rec.e, member(rec.q, id)) end
    end
    local expires = plus(now, rec.k or default_ttl)
    write('HSET', key, 's', 'cancelled', 'er', reason, 'f', now, 'x', expires)
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
