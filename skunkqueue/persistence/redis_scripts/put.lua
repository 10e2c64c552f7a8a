#!lua flags=
-- put.lua: store new jobs (Backend.put), all of one call in one script run.
-- KEYS[1..6]  prefix, counts, scheduled, running, expiry, seq (see _common.lua; job
--             keys j:<id> and ready:<route> are built from the prefix)
-- ARGV[1]     now
-- ARGV[2]     number of jobs, then for each job:
--               id, expires_at ('' for none), n, then n strings: field, value, ...
--               (the record without q), which begin with 's' state, 't' eta, 'r' route
--             Python chose each state (scheduled / queued / retrying / cancelled) with its
--             own float comparison of eta and now.
-- Touches     j:<id> (HASH), scheduled or ready:<route> (ZSET), expiry (ZSET), counts,
--             seq, wake:<route> (LIST), PUBLISH wake:scheduler if an eta is the new earliest.
-- Returns     {one 1/0 per job, skipped}: 0 where a record with that id exists and has not
--             expired (an expired one that sweep has not deleted yet is replaced), or is
--             malformed (then never replaced; skipped names it: 'j:<id>', why); or the
--             error 'SQ_CORRUPT ...' having written nothing (see commit() in _common.lua).

local now, jobs = tonumber(ARGV[1]), tonumber(ARGV[2])
local seq_now = redis.pcall('GET', SEQ)
if type(seq_now) == 'table' or (seq_now and not is_count(seq_now)) then
  return redis.error_reply('SQ_CORRUPT ' .. SEQ .. ' is not an integer; nothing was written')
end
known[SEQ] = true
-- One INCRBY reserves a seq for every job of the call (a refused job leaves a gap).
local first_seq = tonumber(seq_now or '0')
write('INCRBY', SEQ, jobs)
local answers, taken = {}, {}
local i = 3
for j = 1, jobs do
  local id, expires, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local state, eta, route = ARGV[i + 4], ARGV[i + 6], ARGV[i + 8]
  local key = job_key(id)
  local free = not taken[id]
  if free and redis.call('EXISTS', key) == 1 then
    -- Only a record past its expiry is replaced, and only one that can be unlinked whole.
    local old, why = read_job(id, {'s', 'x', 'r', 'q', 'o'})
    if not old then
      skip('j:' .. id, why)
      free = false
    elseif not (old.x and tonumber(old.x) <= now) then
      free = false
    else
      unlink(id, old.s, old.r, old.q, old.o)
      write('DEL', key)
    end
  end
  if free then
    taken[id] = true
    known[key] = true
    local seq = string.format('%d', first_seq + j)
    write('HSET', key, 'q', seq, unpack(ARGV, i + 3, i + 2 + n))
    index(id, state, route, seq, eta)
    if expires ~= '' then
      zadd_later(EXPIRY, expires, id)
    elseif state == 'cancelled' then
      zadd_later(EXPIRY, '+inf', id)
    end
    answers[j] = 1
  else
    answers[j] = 0
  end
  i = i + 3 + n
end
local problem = commit()
if problem then return redis.error_reply(problem) end
wake_scheduler()
return {answers, skipped}
