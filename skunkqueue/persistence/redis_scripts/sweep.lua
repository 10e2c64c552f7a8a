#!lua flags=allow-oom
-- sweep.lua: the leader's fenced step (Backend.sweep): promote due jobs, recover lapsed leases, expire records, bounded by limit per kind.
-- KEYS[1..6]  prefix, counts, scheduled, running, expiry, seq (see _common.lua; job keys
--             j:<id>, ready:<route>, wake:<route> and held:<owner> are built from the
--             prefix: which ids, routes and owners is only known once records are read)
-- KEYS[7]     lease:<fence name> (HASH o owner, n token, u until)
-- ARGV[1] now  [2] fence owner  [3] fence token  [4] limit
-- ARGV[5] the JobRecord default max_deliveries  [6] default result_ttl
-- Touches     scheduled -> ready:<route> (due jobs), running -> ready:<route> or expiry
--             (lapsed leases), expiry + j:<id> + any index (deleted records), held:<owner>,
--             counts, wake:<route>, quarantine (records that cannot be acted on),
--             running_by_event, parked:<event> (one held-back job let through per
--             lapsed job: see finish.lua).
-- Returns     {promoted, recovered, failed, expired, more (1/0), earliest waiting eta
--             ('' if none), earliest running lease end ('' if none), skipped}; or the error
--             'SQ_LEASE_LOST ...' having written nothing, unless the fence holds its lease
--             (fence_holds in _lease.lua, prepended after _common.lua); or 'SQ_CORRUPT ...'
--             having written nothing.
-- Each entry looked at leaves its index, whatever its record: acted on, dropped (stale),
-- or quarantined (malformed), so no entry is met twice and 'more' always means work.

local now, limit = ARGV[1], tonumber(ARGV[4])
local at = tonumber(now)
if not fence_holds(KEYS[7], ARGV[2], ARGV[3], at) then
  return redis.error_reply('SQ_LEASE_LOST the fence is not the current holder of its lease')
end

-- Every batch is read before anything is written. What this call does to a record is
-- kept in `after` (its state, route, seq and owner once the call is done), for the
-- expiry part that may delete a record the other parts just moved.
local due = redis.call('ZRANGEBYSCORE', SCHEDULED, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local lapsed = redis.call('ZRANGEBYSCORE', RUNNING, '-inf', '(' .. now, 'LIMIT', 0, limit)
local expiring = redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local after, expires_too = {}, {}
for k = 1, #expiring, 2 do expires_too[expiring[k]] = true end

-- Due: scheduled and retrying jobs with eta <= now, earliest (eta, seq) first.
local promoted = 0
for k = 1, #due, 2 do
  local m, eta = due[k], due[k + 1]
  local id, seq = parse_member(m)
  local rec, why
  if id then rec, why = read_job(id, {'s', 'r', 'q', 't'}) end
  if not id then
    zrem_later(SCHEDULED, m)
    skip(m, 'not an index entry')
  elseif not rec then
    set_aside(SCHEDULED, m, id, why)
  elseif (rec.s ~= 'scheduled' and rec.s ~= 'retrying') or rec.q ~= seq then
    zrem_later(SCHEDULED, m)  -- stale: the record lives where its own state says
    skip('j:' .. id, 'not waiting as this entry says (state ' .. rec.s .. ')')
  else
    write('HSET', job_key(id), 's', 'queued')
    zrem_later(SCHEDULED, m)
    zadd_later(ready_key(rec.r), eta, m)
    wake(rec.r)
    count(rec.s, rec.r, -1)
    count('queued', rec.r, 1)
    if expires_too[id] then after[id] = {s = 'queued', r = rec.r, q = rec.q} end
    promoted = promoted + 1
  end
end

-- Lapsed: running jobs with lease_until < now go back to their queue, or to error once
-- max_deliveries deliveries were lost (recover() in _common.lua). One that ends in error
-- gets a new expiry, which is what decides whether this call deletes it.
local recovered, failed, new_expiry, expired_now = 0, 0, {}, {}
for _, id in ipairs(lapsed) do
  local key = job_key(id)
  local rec, why = read_job(id, {'s', 'o', 'r', 'q', 't', 'd', 'a', 'm', 'k', 'e'})
  if not rec then
    set_aside(RUNNING, id, id, why)
  elseif rec.s ~= 'running' then
    zrem_later(RUNNING, id)  -- stale: the record lives where its own state says
    skip('j:' .. id, 'not running as this entry says (state ' .. rec.s .. ')')
  else
    let_go(key, id, rec.r, rec.o and held_key(rec.o))
    left_running(rec.e)
    local state, expires = recover(key, id, rec.r, rec.q, rec.t, rec.d, rec.a,
      rec.m or ARGV[5], rec.k or ARGV[6], now)
    after[id] = {s = state, r = rec.r, q = rec.q}
    if state == 'error' then
      failed = failed + 1
      new_expiry[id] = true
      if tonumber(expires) <= at then expired_now[#expired_now + 1] = {id, tonumber(expires)} end
    else
      recovered = recovered + 1
    end
  end
end

-- Expired: records past expires_at are deleted, whatever their state: the first limit
-- by expiry of those read above (unless their expiry just changed) and of those that
-- just ended in error already expired.
local order = {}
for k = 1, #expiring, 2 do
  if not new_expiry[expiring[k]] then
    order[#order + 1] = {expiring[k], tonumber(expiring[k + 1]), k}
  end
end
for k, pair in ipairs(expired_now) do order[#order + 1] = {pair[1], pair[2], #expiring + k} end
table.sort(order, function(x, y)  -- by expiry, then as read (the index's own order)
  if x[2] ~= y[2] then return x[2] < y[2] end
  return x[3] < y[3]
end)
barrier()  -- what the parts above wrote comes first: a record may be deleted from there
local expired, looked = 0, math.min(#order, limit)
for k = 1, looked do
  local id = order[k][1]
  local rec, why = after[id], nil
  if not rec then rec, why = read_job(id, {'s', 'r', 'q', 'o'}) end
  if rec then
    unlink(id, rec.s, rec.r, rec.q, rec.o)
    write('DEL', job_key(id))
    expired = expired + 1
  else
    set_aside(EXPIRY, id, id, why)
  end
end

local problem = commit()
if problem then return redis.error_reply(problem) end

local more = 0
if #due / 2 >= limit or #lapsed >= limit or looked >= limit then more = 1 end
local waiting = redis.call('ZRANGE', SCHEDULED, 0, 0, 'WITHSCORES')[2] or ''
local running = redis.call('ZRANGE', RUNNING, 0, 0, 'WITHSCORES')[2] or ''
return {promoted, recovered, failed, expired, more, waiting, running, skipped}
