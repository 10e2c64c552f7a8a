#!lua flags=
-- claim.lua: take up to limit queued jobs from the given routes (Backend.claim).
-- KEYS[1..6]         prefix, counts, scheduled, running, expiry, seq (see _common.lua;
--                    the job keys j:<id> are built from the prefix: ids are found here)
-- KEYS[7]            held:<owner> (SET)
-- KEYS[8 .. 7+n]     ready:<route> for each of the n routes (ZSET)
-- KEYS[8+n .. 7+2n]  wake:<route> for each route (LIST)
-- ARGV[1] owner  [2] now  [3] lease_until (now + lease, added by Python)  [4] limit
-- ARGV[5] max_bytes ('' for no bound): payload bytes (HSTRLEN of p) taken at most, the
--         first job always taken
-- ARGV[6] n, then [7 .. 6+n] the route names (for the counts)
-- Touches  ready:<route>, j:<id>, running, held:<owner>, counts, wake:<route>,
--          PUBLISH wake:scheduler if the new lease ends before anything else pending.
-- Returns  the taken records, each {id, field, value, ...}, in (eta, seq) order.
-- A batch cut by limit or max_bytes passes the route's wake token on when jobs remain,
-- so idle workers wake one after another instead of all at once.

local owner, now, lease_until, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local max_bytes = tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local candidates = {}
for r = 1, n do
  local head = redis.call('ZRANGE', KEYS[7 + r], 0, limit - 1, 'WITHSCORES')
  for k = 1, #head, 2 do
    candidates[#candidates + 1] = {tonumber(head[k + 1]), member_seq(head[k]), head[k], r, head[k + 1]}
  end
end
if #candidates == 0 then return {} end
-- Compare numbers, never member strings: Lua compares strings with strcoll (locale).
table.sort(candidates, function(x, y)
  if x[1] ~= y[1] then return x[1] < y[1] end
  return x[2] < y[2]
end)

due_at(tonumber(lease_until))
local taken, used, cut = {}, 0, false
for k = 1, math.min(limit, #candidates) do
  local c = candidates[k]
  local id, route = member_id(c[3]), ARGV[6 + c[4]]
  local key = job_key(id)
  if max_bytes then
    -- Stop before the first job over the bound (never skip to a smaller one: the order
    -- must hold); the one left is the head of its queue for the next claim.
    used = used + redis.call('HSTRLEN', key, 'p')
    if k > 1 and used > max_bytes then
      cut = true
      break
    end
  end
  redis.call('ZREM', KEYS[7 + c[4]], c[3])
  local started = now  -- never before the eta (see Backend.claim)
  if c[1] > tonumber(now) then started = c[5] end
  redis.call('HSET', key, 's', 'running', 'o', owner, 'l', lease_until, 'b', started)
  redis.call('HINCRBY', key, 'd', 1)
  redis.call('ZADD', RUNNING, lease_until, id)
  redis.call('SADD', KEYS[7], id)
  count('queued', route, -1)
  count('running', route, 1)
  local record = redis.call('HGETALL', key)
  table.insert(record, 1, id)
  taken[k] = record
end
if #taken == limit or cut then
  for r = 1, n do
    if redis.call('ZCARD', KEYS[7 + r]) > 0 then wake_key(KEYS[7 + n + r]) end
  end
end
flush()
wake_scheduler()
return taken
