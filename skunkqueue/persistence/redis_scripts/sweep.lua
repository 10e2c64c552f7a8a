#!lua flags=
-- sweep.lua: the leader's fenced step (Backend.sweep): promote due jobs, recover lapsed leases, expire records, bounded by limit per kind.
-- KEYS[1..6]  prefix, counts, scheduled, running, expiry, seq (see _common.lua; job keys
--             j:<id>, ready:<route>, wake:<route> and held:<owner> are built from the
--             prefix: which ids, routes and owners is only known once records are read)
-- KEYS[7]     lease:<fence name> (HASH o owner, n token, u until)
-- ARGV[1] now  [2] fence owner  [3] fence token  [4] limit
-- ARGV[5] the JobRecord default max_deliveries  [6] default result_ttl
-- Touches     scheduled -> ready:<route> (due jobs), running -> ready:<route> or expiry
--             (lapsed leases), expiry + j:<id> + any index (deleted records), held:<owner>,
--             counts, wake:<route>.
-- Returns     {promoted, recovered, failed, expired, more (1/0), earliest waiting eta
--             ('' if none), earliest running lease end ('' if none)}; or the error
--             'SQ_LEASE_LOST ...' having written nothing, unless the fence holds its lease
--             (fence_holds in _lease.lua, prepended after _common.lua).

local now, limit = ARGV[1], tonumber(ARGV[4])
if not fence_holds(KEYS[7], ARGV[2], ARGV[3], tonumber(now)) then
  return redis.error_reply('SQ_LEASE_LOST the fence is not the current holder of its lease')
end

-- Due: scheduled and retrying jobs with eta <= now, earliest (eta, seq) first.
local due = redis.call('ZRANGEBYSCORE', SCHEDULED, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local due_members = {}
for k = 1, #due, 2 do
  local m, eta = due[k], due[k + 1]
  due_members[#due_members + 1] = m
  local key = job_key(member_id(m))
  local rec = redis.call('HMGET', key, 's', 'r')
  redis.call('HSET', key, 's', 'queued')
  add_later(ready_key(rec[2]), eta, m)
  wake(rec[2])
  count(rec[1], rec[2], -1)
  count('queued', rec[2], 1)
end
if #due_members > 0 then redis.call('ZREM', SCHEDULED, unpack(due_members)) end
local promoted = #due / 2

-- Lapsed: running jobs with lease_until < now go back to their queue, or to error once
-- max_deliveries deliveries were lost (recover() in _common.lua).
local lapsed = redis.call('ZRANGEBYSCORE', RUNNING, '-inf', '(' .. now, 'LIMIT', 0, limit)
local recovered, failed = 0, 0
for _, id in ipairs(lapsed) do
  local key = job_key(id)
  local rec = redis.call('HMGET', key, 'r', 'q', 't', 'o', 'd', 'a', 'm', 'k')
  let_go(key, id, rec[1], rec[4] and held_key(rec[4]))
  local state = recover(key, id, rec[1], rec[2], rec[3], rec[5], rec[6], rec[7] or ARGV[5],
    rec[8] or ARGV[6], now)
  if state == 'error' then failed = failed + 1 else recovered = recovered + 1 end
end

flush()  -- before deleting: an expired record may be one just indexed above

-- Expired: records past expires_at are deleted, whatever their state.
local expired = redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  local key = job_key(id)
  local rec = redis.call('HMGET', key, 's', 'r', 'q', 'o')
  if rec[1] then
    unlink(id, rec[1], rec[2], rec[3], rec[4])
    redis.call('DEL', key)
  else
    redis.call('ZREM', EXPIRY, id)
  end
end
flush()

local more = 0
if promoted >= limit or #lapsed >= limit or #expired >= limit then more = 1 end
local waiting = redis.call('ZRANGE', SCHEDULED, 0, 0, 'WITHSCORES')[2] or ''
local running = redis.call('ZRANGE', RUNNING, 0, 0, 'WITHSCORES')[2] or ''
return {promoted, recovered, failed, #expired, more, waiting, running}
