#!lua flags=
-- cancel.lua: cancel jobs that have not started (Backend.cancel).
-- KEYS[1..6]  prefix, counts, scheduled, running, expiry, seq (see _common.lua; job keys
--             j:<id> and ready:<route> are built from the prefix)
-- ARGV[1] now  [2] error JSON {"reason": ...}  [3] the JobRecord default result_ttl
-- ARGV[4..]   job ids
-- Touches     j:<id>, scheduled or ready:<route>, expiry, counts.
-- Returns     one 1/0 per id: 1 where the job was scheduled, queued or retrying.

local now, reason, default_ttl = ARGV[1], ARGV[2], ARGV[3]
local answers = {}
for k = 4, #ARGV do
  local id = ARGV[k]
  local key = job_key(id)
  local rec = redis.call('HMGET', key, 's', 'r', 'q', 'k')
  local state = rec[1]
  if state == 'scheduled' or state == 'retrying' or state == 'queued' then
    unlink(id, state, rec[2], rec[3], nil)
    local expires = plus(now, rec[4] or default_ttl)
    redis.call('HSET', key, 's', 'cancelled', 'er', reason, 'f', now, 'x', expires)
    redis.call('ZADD', EXPIRY, expires, id)
    count('cancelled', rec[2], 1)
    answers[#answers + 1] = 1
  else
    answers[#answers + 1] = 0
  end
end
flush()
return answers
