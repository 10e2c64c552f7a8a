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
-- Returns     one 1/0 per job: 0 where a record with that id exists and has not expired
--             (an expired one that sweep has not deleted yet is replaced).

local now, jobs = tonumber(ARGV[1]), tonumber(ARGV[2])
-- One INCRBY reserves a seq for every job of the call (a refused job leaves a gap).
local first_seq = redis.call('INCRBY', SEQ, jobs) - jobs
local answers = {}
local i = 3
for j = 1, jobs do
  local id, expires, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local state, eta, route = ARGV[i + 4], ARGV[i + 6], ARGV[i + 8]
  local key = job_key(id)
  local old = nil
  if redis.call('EXISTS', key) == 1 then old = redis.call('HMGET', key, 's', 'r', 'q', 'o', 'x') end
  if old and not (old[5] and tonumber(old[5]) <= now) then
    answers[j] = 0
  else
    if old then
      unlink(id, old[1], old[2], old[3], old[4])
      redis.call('DEL', key)
    end
    local seq = string.format('%d', first_seq + j)
    redis.call('HSET', key, 'q', seq, unpack(ARGV, i + 3, i + 2 + n))
    index(id, state, route, seq, eta)
    if expires ~= '' then
      redis.call('ZADD', EXPIRY, expires, id)
    elseif state == 'cancelled' then
      redis.call('ZADD', EXPIRY, '+inf', id)
    end
    answers[j] = 1
  end
  i = i + 3 + n
end
flush()
wake_scheduler()
return answers
