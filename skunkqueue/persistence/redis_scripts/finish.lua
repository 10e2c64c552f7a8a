#!lua flags=
-- finish.lua: record the outcomes of jobs an owner holds (Backend.finish).
-- KEYS[1..6]  prefix, counts, scheduled, running, expiry, seq (see _common.lua; job keys
--             j:<id> and ready:<route> are built from the prefix)
-- KEYS[7]     held:<owner> (SET)
-- ARGV[1] owner  [2] now  [3] the JobRecord default result_ttl  [4] number of outcomes,
-- then 8 strings per outcome:
--   id, state (complete / error / retrying / queued), eta ('' = now),
--   has_result ('1'/'0'), result, has_error ('1'/'0'), error JSON,
--   started_at ('' = keep the claim's)
-- An outcome other than queued moves the error the record held (from an attempt that
-- ended retrying) to its history, field hi (rules.apply_outcome, rules.remember_error).
-- Touches     j:<id>, running, held:<owner>, running_by_event, parked:<event> (jobs of
--             the event held back by a concurrency limit: one let through per job
--             finished, to ready:<route> + wake:<route>), then by outcome: expiry (complete, error),
--             scheduled (retrying), ready:<route> + wake:<route> (queued); counts;
--             PUBLISH wake:scheduler when a retry eta is the new earliest.
-- Returns     {one 1/0 per outcome, skipped}: 0 unless the job is running and held by
--             owner, and its record well-formed (a malformed one is left as it is and
--             named in skipped; sweep sets it aside once its lease lapses); or the error
--             'SQ_CORRUPT ...' having written nothing.

local owner, now, default_ttl = ARGV[1], ARGV[2], ARGV[3]
local answers, done = {}, {}
local i = 5
for j = 1, tonumber(ARGV[4]) do
  local id, state, eta = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = job_key(id)
  local rec, why = nil, nil
  if not done[id] then  -- a second outcome for a job finished in this call finds it done
    rec, why = read_job(id, {'s', 'o', 'r', 'q', 't', 'k', 'a', 'd', 'e', 'er', 'hi'})
  end
  if not rec or rec.s ~= 'running' or rec.o ~= owner then
    if why and why ~= MISSING then skip('j:' .. id, why) end
    answers[j] = 0
  else
    done[id] = true
    local route, seq = rec.r, rec.q
    let_go(key, id, route, KEYS[7])
    left_running(rec.e)
    if state == 'queued' then
      hand_back(key, id, route, seq, rec.t, rec.d)
    else
      local fields = {'a', string.format('%d', tonumber(rec.a or '0') + 1)}
      if rec.er then  -- an error from an attempt that ended retrying: kept in history
        fields[3], fields[4] = 'hi', with_error(rec.hi, rec.a or '0', 'retrying', rec.er)
      end
      if ARGV[i + 5] == '1' then
        fields[#fields + 1] = 'er'
        fields[#fields + 1] = ARGV[i + 6]
      else
        write('HDEL', key, 'er')
      end
      if ARGV[i + 7] ~= '' then
        fields[#fields + 1] = 'b'
        fields[#fields + 1] = ARGV[i + 7]
      end
      if state == 'retrying' then
        if eta == '' then eta = now end
        write('HSET', key, 's', 'retrying', 't', eta, unpack(fields))
        index(id, 'retrying', route, seq, eta)
      else
        if ARGV[i + 3] == '1' then
          fields[#fields + 1] = 'rs'
          fields[#fields + 1] = ARGV[i + 4]
        else
          write('HDEL', key, 'rs')
        end
        local expires = plus(now, rec.k or default_ttl)
        write('HSET', key, 's', state, 'f', now, 'x', expires, unpack(fields))
        zadd_later(EXPIRY, expires, id)
        count(state, route, 1)
      end
    end
    answers[j] = 1
  end
  i = i + 8
end
local problem = commit()
if problem then return redis.error_reply(problem) end
wake_scheduler()
return {answers, skipped}
