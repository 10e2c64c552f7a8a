#!lua flags=
-- finish.lua: record the outcomes of jobs an owner holds (Backend.finish).
-- KEYS[1..6]  prefix, counts, scheduled, running, expiry, seq (see _common.lua; job keys
--             j:<id> and ready:<route> are built from the prefix)
-- KEYS[7]     held:<owner> (SET)
-- ARGV[1] owner  [2] now  [3] the JobRecord default result_ttl  [4] number of outcomes,
-- then 7 strings per outcome:
--   id, state (complete / error / retrying / queued), eta ('' = now),
--   has_result ('1'/'0'), result, has_error ('1'/'0'), error JSON
-- Touches     j:<id>, running, held:<owner>, then by outcome: expiry (complete, error),
--             scheduled (retrying), ready:<route> + wake:<route> (queued); counts;
--             PUBLISH wake:scheduler when a retry eta is the new earliest.
-- Returns     one 1/0 per outcome: 0 unless the job is running and held by owner.

local owner, now, default_ttl = ARGV[1], ARGV[2], ARGV[3]
local answers = {}
local i = 5
for j = 1, tonumber(ARGV[4]) do
  local id, state, eta = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = job_key(id)
  local rec = redis.call('HMGET', key, 's', 'o', 'r', 'q', 't', 'k')
  if rec[1] ~= 'running' or rec[2] ~= owner then
    answers[j] = 0
  else
    local route, seq = rec[3], rec[4]
    let_go(key, id, route, KEYS[7])
    if state == 'queued' then
      hand_back(key, id, route, seq, rec[5])
    else
      redis.call('HINCRBY', key, 'a', 1)
      if ARGV[i + 5] == '1' then
        redis.call('HSET', key, 'er', ARGV[i + 6])
      else
        redis.call('HDEL', key, 'er')
      end
      if state == 'retrying' then
        if eta == '' then eta = now end
        redis.call('HSET', key, 's', 'retrying', 't', eta)
        index(id, 'retrying', route, seq, eta)
      else
        if ARGV[i + 3] == '1' then
          redis.call('HSET', key, 'rs', ARGV[i + 4])
        else
          redis.call('HDEL', key, 'rs')
        end
        local expires = plus(now, rec[6] or default_ttl)
        redis.call('HSET', key, 's', state, 'f', now, 'x', expires)
        redis.call('ZADD', EXPIRY, expires, id)
        count(state, route, 1)
      end
    end
    answers[j] = 1
  end
  i = i + 7
end
flush()
wake_scheduler()
return answers
