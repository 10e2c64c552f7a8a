-- _common.lua: helpers shared by the job scripts. redis_support.py prepends this file to
-- put, claim, renew, finish, cancel, sweep, release and stats, so Redis loads (and caches by
-- SHA) each of those as one text: the script's '#!lua flags=' line, this file, then the
-- rest of the script's own (sweep has _lease.lua in between).
--
-- The fixed keys of a queue, KEYS[1..6] in every job script, all under the queue's
-- hash tag '{<queue>}' so that every script runs unchanged on Redis Cluster:
--   KEYS[1] prefix     'sq:{<queue>}:', used only to build the keys below
--   KEYS[2] counts     HASH  '<state>|<route>' -> number of records (exact, for stats)
--   KEYS[3] scheduled  ZSET  member(seq, id) -> eta, for states scheduled and retrying
--   KEYS[4] running    ZSET  id -> lease_until
--   KEYS[5] expiry     ZSET  id -> expires_at, for every record that has one, and
--                      +inf for a finished record that never expires
--   KEYS[6] seq        STRING counter giving each put its seq
-- Keys built here from the prefix, because a script cannot name them before it runs
-- (claim, sweep and release discover ids; put, finish, cancel, sweep and release read
-- routes and owners from records). They carry the prefix's hash tag, so they live in the same slot:
--   prefix .. 'j:' .. id         HASH  the job record (fields below)
--   prefix .. 'ready:' .. route  ZSET  member(seq, id) -> eta, for state queued
--   prefix .. 'wake:' .. route   LIST  at most one token: "a job became ready here"
--   prefix .. 'held:' .. owner   SET   ids of the running jobs that owner holds
-- A channel, not a key: PUBLISH prefix .. 'wake:scheduler' when the scheduler's next due
-- time moves earlier (every scheduler subscribes, so a standby never swallows the
-- leader's wake-up the way a popped list token would).
--
-- Job record fields (redis.py FIELDS; a field that is absent holds the JobRecord default):
--   e event  r route  p payload  z serializer  s state  t eta  q seq
--   c created_at (absent where it equals t: put leaves it out, decode_record restores it)
--   a attempts  d deliveries  m max_deliveries  o owner  l lease_until  b started_at
--   f finished_at  x expires_at  k result_ttl  tm timeout  rt retry  rs result
--   er error  sc schedule  pa parent
-- Times cross as strings: Python's repr() in, '%.17g' out. Lua numbers are doubles, so
-- tonumber() of such a string is exact and '%.17g' round-trips, while tostring() would
-- round to 14 digits. Scores handed to ZADD are the strings themselves.

local P, COUNTS, SCHEDULED, RUNNING, EXPIRY, SEQ = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

local function job_key(id) return P .. 'j:' .. id end
local function ready_key(route) return P .. 'ready:' .. route end
local function held_key(owner) return P .. 'held:' .. owner end

local function fmt(x) return string.format('%.17g', x) end
local function plus(a, b) return fmt(tonumber(a) + tonumber(b)) end

-- Index member: a digit-count character, the decimal seq, '|', the id. Members of equal
-- score sort by bytes, which this encoding makes the order of seq (put order) at any
-- length; no zero padding, so short seqs cost no memory.
local function member(seq, id) return string.char(48 + #seq) .. seq .. '|' .. id end
local function member_id(m) return string.sub(m, string.byte(m) - 45) end
local function member_seq(m) return tonumber(string.sub(m, 2, string.byte(m) - 47)) end

-- Count changes are summed per (state, route), and index additions grouped per key;
-- flush() writes both once at the end of the script (one ZADD per key, not per job).
local deltas, additions = {}, {}
local function count(state, route, n)
  local field = state .. '|' .. route
  deltas[field] = (deltas[field] or 0) + n
end
local function add_later(key, score, m)
  local list = additions[key]
  if not list then list = {}; additions[key] = list end
  list[#list + 1] = score
  list[#list + 1] = m
end
local function flush()
  for key, list in pairs(additions) do redis.call('ZADD', key, unpack(list)) end
  for field, n in pairs(deltas) do
    if n ~= 0 and redis.call('HINCRBY', COUNTS, field, n) <= 0 then
      redis.call('HDEL', COUNTS, field)
    end
  end
  deltas, additions = {}, {}
end

-- One token per route at most: it means "look", not "one job", and a worker's claim
-- passes it on while jobs remain.
local woken = {}
local function wake_key(key)
  if redis.call('LLEN', key) == 0 then redis.call('RPUSH', key, '1') end
end
local function wake(route)
  if not woken[route] then
    woken[route] = true
    wake_key(P .. 'wake:' .. route)
  end
end

-- The scheduler sleeps until the earliest waiting eta or running lease end. A script
-- calls due_at(t) before it adds time t to scheduled or running (the first call reads
-- the earliest time so far), and wake_scheduler() at the end, which publishes if some
-- t is earlier. Removals made before the first due_at only make that time later, so
-- they can cause a spare wake-up, never a missed one.
local function head_score(key)
  local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if head[2] then return tonumber(head[2]) end
  return math.huge
end
local before, soonest = nil, math.huge
local function due_at(t)
  if before == nil then before = math.min(head_score(SCHEDULED), head_score(RUNNING)) end
  if t < soonest then soonest = t end
end
local function wake_scheduler()
  if before ~= nil and soonest < before then
    redis.call('PUBLISH', P .. 'wake:scheduler', '1')
  end
end

-- Take a record out of whichever index its state puts it in, and out of the counts.
local function unlink(id, state, route, seq, owner)
  if state == 'scheduled' or state == 'retrying' then
    redis.call('ZREM', SCHEDULED, member(seq, id))
  elseif state == 'queued' then
    redis.call('ZREM', ready_key(route), member(seq, id))
  elseif state == 'running' then
    redis.call('ZREM', RUNNING, id)
    if owner then redis.call('SREM', held_key(owner), id) end
  end
  redis.call('ZREM', EXPIRY, id)
  count(state, route, -1)
end

-- Where a stored record waits, given its state (written by flush()).
local function index(id, state, route, seq, eta)
  if state == 'scheduled' or state == 'retrying' then
    due_at(tonumber(eta))
    add_later(SCHEDULED, eta, member(seq, id))
  elseif state == 'queued' then
    add_later(ready_key(route), eta, member(seq, id))
    wake(route)
  end
  count(state, route, 1)
end

-- A running record stops running (finish, sweep's recovery, release): out of the lease
-- index, its owner's held set (held: that key, or nil) and the running count; owner and
-- lease cleared. The caller then gives it its new state.
local function let_go(key, id, route, held)
  redis.call('ZREM', RUNNING, id)
  if held then redis.call('SREM', held, id) end
  redis.call('HDEL', key, 'o', 'l')
  count('running', route, -1)
end

-- Handed back unrun (a 'queued' outcome, a released job that never started): the
-- delivery does not count, and the eta and seq keep its place at the head of its queue.
local function hand_back(key, id, route, seq, eta)
  redis.call('HSET', key, 's', 'queued')
  redis.call('HINCRBY', key, 'd', -1)
  index(id, 'queued', route, seq, eta)
end

-- A lost delivery (a lapsed lease, a worker known dead): back on the queue, or 'error'
-- once max_deliveries deliveries were lost (rules.recover and lost_deliveries_error,
-- field for field). deliveries and attempts as stored (nil: 0); max_deliveries and
-- result_ttl with the defaults already filled in. Returns the new state.
local function recover(key, id, route, seq, eta, deliveries, attempts, max_deliveries, ttl, now)
  local lost = tonumber(deliveries or '0') - tonumber(attempts or '0')
  local most = tonumber(max_deliveries)
  if lost >= most then
    local error_json = cjson.encode({
      type = 'WorkerLost',
      message = string.format('lost %d deliveries (max_deliveries=%d): ', lost, most)
        .. 'the workers holding the job stopped renewing its lease',
      reason = 'lost deliveries',
    })
    local expires = plus(now, ttl)
    redis.call('HSET', key, 's', 'error', 'er', error_json, 'f', now, 'x', expires)
    redis.call('ZADD', EXPIRY, expires, id)
    count('error', route, 1)
    return 'error'
  end
  redis.call('HSET', key, 's', 'queued')
  index(id, 'queued', route, seq, eta)
  return 'queued'
end
