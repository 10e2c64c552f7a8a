#!lua flags=allow-oom
-- claim.lua: take up to limit queued jobs from the given routes (Backend.claim).
-- KEYS[1..6]         prefix, counts, scheduled, running, expiry, seq (see _common.lua;
--                    the job keys j:<id> are built from the prefix: ids are found here)
-- KEYS[7]            held:<owner> (SET)
-- KEYS[8 .. 7+n]     ready:<route> for each of the n routes (ZSET)
-- KEYS[8+n .. 7+2n]  wake:<route> for each route (LIST)
-- ARGV[1] owner  [2] now  [3] lease_until (now + lease, added by Python)  [4] limit
-- ARGV[5] max_bytes ('' for no bound): payload bytes (the length of p) taken at most, the
--         first job always taken
-- ARGV[6] n, then [7 .. 6+n] the route names (for the counts)
-- Touches  ready:<route>, j:<id>, running, held:<owner>, counts, wake:<route>, quarantine,
--          running_by_event, parked:<event> (a job held back by its concurrency limit;
--          one held back counts against SKIP_BUDGET like one passed over),
--          PUBLISH wake:scheduler if the new lease ends before anything else pending.
-- Returns  {the taken records, each {id, field, value, ...}, in (eta, seq) order, skipped};
--          or the error 'SQ_CORRUPT ...' having written nothing.
-- Every record is read whole and checked before it is taken (Python decodes it). An entry
-- that cannot be taken (its record missing, malformed, or not queued on this route) is
-- passed over and taken out of the queue, so the jobs behind it are claimed in the same
-- call: up to SKIP_BUDGET such entries a call. A batch cut by limit or max_bytes, or
-- stopped by that budget, passes the route's wake token on when jobs remain, so idle
-- workers wake one after another instead of all at once.

local SKIP_BUDGET = 250
local owner, now, lease_until, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local max_bytes = tonumber(ARGV[5])
local n = tonumber(ARGV[6])

-- Candidates come in windows of limit entries per route. Leaving order across routes
-- holds only while every route with more entries still has some in its window, so the
-- walk stops at the last entry of a full window and reads the next windows first.
local offsets, starts, full = {}, {}, {}
for r = 1, n do offsets[r] = 0 end
local function window()
  local candidates = {}
  for r = 1, n do
    starts[r] = offsets[r]
    local head = redis.call('ZRANGE', KEYS[7 + r], offsets[r], offsets[r] + limit - 1, 'WITHSCORES')
    full[r] = #head == 2 * limit
    for k = 1, #head, 2 do
      local id, seq = parse_member(head[k])
      -- (Compare numbers, never member strings: Lua compares strings with strcoll.)
      candidates[#candidates + 1] = {tonumber(head[k + 1]), tonumber(seq or '0'), head[k], r, head[k + 1], id}
    end
  end
  table.sort(candidates, function(x, y)
    if x[1] ~= y[1] then return x[1] < y[1] end
    return x[2] < y[2]
  end)
  return candidates
end

-- Whether an entry can be taken: its checked record, or nil, why, and whether the entry
-- is stale (its record, if any, is well-formed and lives where its own state says).
local function takeable(m, id, route)
  if not id then return nil, 'not an index entry', true end
  local rec, why = read_whole_job(id)
  if rec and (rec.s ~= 'queued' or rec.r ~= route or member(rec.q, id) ~= m) then
    return nil, 'not queued on ' .. route .. ' as this entry says (state ' .. rec.s
      .. ', route ' .. rec.r .. ')', true
  end
  return rec, why, false
end

local taken, used, cut, passed = {}, 0, false, 0
local more = true
while more and #taken < limit and not cut and passed < SKIP_BUDGET do
  more = false
  for _, c in ipairs(window()) do
    if #taken >= limit or passed >= SKIP_BUDGET then break end
    local m, r, id = c[3], c[4], c[6]
    local ready, route = KEYS[7 + r], ARGV[6 + r]
    local rec, why, stale = takeable(m, id, route)
    -- A job whose event has its limit of running jobs is held back (rules.gate_open).
    local refused = false
    if rec and rec.cc then
      local running, problem = running_count(rec.e)
      if problem then return redis.error_reply(problem) end
      refused = running >= tonumber(rec.cc)
    end
    if rec and not refused and max_bytes and #taken > 0 and used + #rec.p > max_bytes then
      -- Stop before the first job over the bound (never skip to a smaller one: the order
      -- must hold); the one left is the head of its queue for the next claim.
      cut = true
      break
    end
    offsets[r] = offsets[r] + 1
    if refused then
      hold_back(ready, m, c[5], rec.e)
      passed = passed + 1
    elseif rec then
      used = used + #rec.p
      zrem_later(ready, m)
      -- The claim's time as it is, never moved to the eta (see Backend.claim).
      rec.s, rec.o, rec.l, rec.b = 'running', owner, lease_until, now
      rec.d = string.format('%d', tonumber(rec.d or '0') + 1)
      write('HSET', job_key(id), 's', 'running', 'o', owner, 'l', lease_until, 'b', now, 'd', rec.d)
      zadd_later(RUNNING, lease_until, id)
      sadd_later(KEYS[7], id)
      count('queued', route, -1)
      count('running', route, 1)
      entered_running(rec.e)
      local record = {id}
      for f, v in pairs(rec) do
        record[#record + 1] = f
        record[#record + 1] = v
      end
      taken[#taken + 1] = record
    else
      passed = passed + 1
      if stale then
        zrem_later(ready, m)  -- the record, if any, lives where its own state says
        skip(id and ('j:' .. id) or m, why)
      else
        set_aside(ready, m, id, why)
      end
    end
    if full[r] and offsets[r] - starts[r] == limit then
      more = true  -- the route's window is used up: read the next windows first
      break
    end
  end
end
if #taken > 0 then due_at(tonumber(lease_until)) end
local pass_on = {}
if #taken == limit or cut or passed >= SKIP_BUDGET then
  for r = 1, n do
    -- Entries left after this call's removals (ZCARD is read before them; the entries
    -- removed are the first offsets[r] of the route).
    if redis.call('ZCARD', KEYS[7 + r]) > offsets[r] then pass_on[#pass_on + 1] = KEYS[7 + n + r] end
  end
end
local problem = commit()
if problem then return redis.error_reply(problem) end
for _, key in ipairs(pass_on) do wake_key(key) end
wake_scheduler()
return {taken, skipped}
