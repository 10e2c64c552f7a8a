-- _common.lua: helpers shared by the job scripts. redis_support.py prepends this file to
-- put, claim, renew, finish, cancel, sweep, release and stats, so Redis loads (and caches by
-- SHA) each of those as one text: the script's '#!lua flags=' line, _checks.lua, this
-- file, then the script's own text (sweep has _lease.lua in between).
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
--   prefix .. 'quarantine'       ZSET  'j:<id>' or 'lease:<name>' -> when (TIME) a script
--                                      set that malformed record aside (see below)
--   prefix .. 'running_by_event' HASH  event -> its running jobs (every job, limit or not)
--   prefix .. 'parked:' .. event ZSET  member(seq, id) -> eta: queued jobs of the event a
--                                      claim held back by their concurrency limit (out
--                                      of ready:<route>, still counted 'queued')
-- A channel, not a key: PUBLISH prefix .. 'wake:scheduler' when the scheduler's next due
-- time moves earlier (every scheduler subscribes, so a standby never swallows the
-- leader's wake-up the way a popped list token would).
--
-- Job record fields (redis.py FIELDS; a field that is absent holds the JobRecord default):
--   e event  r route  p payload  z serializer  s state  t eta  q seq
--   c created_at (absent where it equals t: put leaves it out, decode_record restores it)
--   a attempts  d deliveries  m max_deliveries  o owner  l lease_until  b started_at
--   f finished_at  x expires_at  k result_ttl  tm timeout  rt retry  rs result
--   er error  sc schedule  pa parent  cc concurrency
--   hi history: a JSON array with one entry per line, '[e1,\ne2]' (see with_error below)
-- Times cross as strings: Python's repr() in, '%.17g' out. Lua numbers are doubles, so
-- tonumber() of such a string is exact and '%.17g' round-trips, while tostring() would
-- round to 14 digits. Scores handed to ZADD are the strings themselves.
--
-- Read, check, then write. Redis does not roll a script back: a command that fails (a
-- key of another type, a field that is not a number) or a Lua error leaves every write
-- before it applied. So a script first reads and checks everything it will act on, and
-- only records its writes (write, zadd_later, ... below); commit() then checks the type
-- of every key they touch and the counts they change, and only then writes, when no
-- command can fail any more. What a script finds wrong:
--   * an index entry whose record is missing is stale: the entry is removed (leaving it
--     would meet every later call) and no record is created;
--   * a record that exists but is malformed (not a hash, an unknown state, a field that
--     does not parse) is never written or deleted; when an index led the script to it,
--     its id leaves that index for the quarantine set, so it blocks nothing (the head of
--     a queue, sweep's 'more') and stays there to be counted (stats) and looked at;
--   * an entry whose well-formed record is not in the state, route or place that index
--     stands for is stale too, and removed; the record stays as it is;
--   * a fixed key of the wrong type, or a count that is not an integer, is an error
--     reply ('SQ_CORRUPT ...') before the first write.
-- Each script returns what it skipped (name, reason, ...), which redis.py logs.

local P, COUNTS, SCHEDULED, RUNNING, EXPIRY, SEQ = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local QUARANTINE = P .. 'quarantine'

local function job_key(id) return P .. 'j:' .. id end
local function ready_key(route) return P .. 'ready:' .. route end
local function held_key(owner) return P .. 'held:' .. owner end

local function fmt(x) return string.format('%.17g', x) end
local function plus(a, b) return fmt(tonumber(a) + tonumber(b)) end

-- Index member: a digit-count character, the decimal seq, '|', the id. Members of equal
-- score sort by bytes, which this encoding makes the order of seq (put order) at any
-- length; no zero padding, so short seqs cost no memory.
local function member(seq, id) return string.char(48 + #seq) .. seq .. '|' .. id end
-- A member's id and seq (a string), or nil for a member that is not one.
local function parse_member(m)
  local digits = (string.byte(m) or 0) - 48
  if digits < 1 or digits > 19 or #m < digits + 3 then return nil end
  local seq = string.sub(m, 2, 1 + digits)
  if string.find(seq, '%D') or string.sub(m, 2 + digits, 2 + digits) ~= '|' then return nil end
  return string.sub(m, 3 + digits), seq
end

-- -- checking what was read ------------------------------------------------------------

local STATES = {
  scheduled = true, queued = true, running = true, retrying = true,
  complete = true, error = true, cancelled = true,
}
-- What each record field holds: redis_support.FIELDS, mirrored (a test compares them).
-- name: non-empty text; count: an integer; number: a finite decimal number.
local KIND = {
  e = 'name', r = 'name', p = 'text', z = 'name', s = 'state', t = 'number', c = 'number',
  q = 'count', a = 'count', d = 'count', m = 'count', o = 'text', l = 'number', b = 'number',
  f = 'number', x = 'number', k = 'number', tm = 'number', rt = 'json', rs = 'text',
  er = 'json', sc = 'text', pa = 'text', cc = 'count', hi = 'json',
}
-- Fields every record has (put writes them; redis_support.ALWAYS_STORED and seq).
local REQUIRED = {e = true, r = true, p = true, s = true, t = true, q = true}

local WHAT = {
  name = 'empty', state = 'not a state', number = 'not a number', count = 'not an integer',
  json = 'not JSON',
}

-- Why v cannot be field f of a record, or nil when it can.
local function field_problem(f, v)
  local kind = KIND[f]
  if kind == 'text' then return nil
  elseif kind == nil then return 'unknown field ' .. f
  elseif kind == 'number' then if is_number(v) then return nil end
  elseif kind == 'count' then if is_count(v) then return nil end
  elseif kind == 'name' then if v ~= '' then return nil end
  elseif kind == 'state' then if STATES[v] then return nil end
  elseif is_json(v) then return nil
  end
  return 'field ' .. f .. ' is ' .. WHAT[kind]
end

local MISSING = 'missing'
local known = {}  -- keys read as hashes (or absent): commit() need not check their type

-- The fields `names` (the first one 's') of job id's record, checked: a table field ->
-- value (absent fields left out), or nil and why: MISSING when there is no record.
local function read_job(id, names)
  local key = job_key(id)
  local got = redis.pcall('HMGET', key, unpack(names))
  if got.err then return nil, 'not a hash' end
  if not got[1] and redis.call('EXISTS', key) == 0 then return nil, MISSING end
  known[key] = true
  local rec = {}
  for i, f in ipairs(names) do
    local v = got[i]
    if v then
      local problem = field_problem(f, v)
      if problem then return nil, problem end
      rec[f] = v
    elseif REQUIRED[f] then
      return nil, 'no field ' .. f
    end
  end
  return rec
end

-- The whole record of job id, every field checked (claim hands it to Python, which
-- decodes every field): a table field -> value, or nil and why (MISSING: no record).
local function read_whole_job(id)
  local key = job_key(id)
  local got = redis.pcall('HGETALL', key)
  if got.err then return nil, 'not a hash' end
  if #got == 0 then return nil, MISSING end
  known[key] = true
  local rec = {}
  for i = 1, #got, 2 do
    local problem = field_problem(got[i], got[i + 1])
    if problem then return nil, problem end
    rec[got[i]] = got[i + 1]
  end
  for f in pairs(REQUIRED) do
    if not rec[f] then return nil, 'no field ' .. f end
  end
  return rec
end

-- -- recorded writes ------------------------------------------------------------------

-- Commands on hashes (and seq), in order; and member changes of sets and sorted sets,
-- grouped per key (one ZADD per key, not per job), removals before additions. barrier()
-- ends a stage: its member changes are made before any command recorded after it.
local TYPE_OF = {HSET = 'hash', HDEL = 'hash', HINCRBY = 'hash', INCRBY = 'string'}
local writes, needs = {}, {}
local function new_stage() return {zrem = {}, srem = {}, zadd = {}, sadd = {}} end
local stage = new_stage()

local function need(key, kind)
  if not known[key] then needs[key] = kind end
end
local function write(...)
  local command = {...}
  need(command[2], TYPE_OF[command[1]])
  writes[#writes + 1] = command
end
local function group(name, kind, key)
  local list = stage[name][key]
  if not list then
    need(key, kind)
    list = {}
    stage[name][key] = list
  end
  return list
end
local function zadd_later(key, score, m)
  local list = group('zadd', 'zset', key)
  list[#list + 1] = score
  list[#list + 1] = m
end
local function zrem_later(key, m)
  local list = group('zrem', 'zset', key)
  list[#list + 1] = m
end
local function sadd_later(key, m)
  local list = group('sadd', 'set', key)
  list[#list + 1] = m
end
local function srem_later(key, m)
  local list = group('srem', 'set', key)
  list[#list + 1] = m
end
local function barrier()
  writes[#writes + 1] = stage
  stage = new_stage()
end

-- Count changes are summed per (state, route) and written once, at the end.
local deltas = {}
local function count(state, route, n)
  local field = state .. '|' .. route
  deltas[field] = (deltas[field] or 0) + n
end

-- One token per route at most: it means "look", not "one job", and a worker's claim
-- passes it on while jobs remain. A token is a hint, so a wake list of another type
-- (whose BLPOP fails anyway) is passed over rather than failing the script.
local woken, to_wake = {}, {}
local function wake_key(key)
  local length = redis.pcall('LLEN', key)
  if length == 0 then redis.pcall('RPUSH', key, '1') end
end
local function wake(route)
  if not woken[route] then
    woken[route] = true
    to_wake[#to_wake + 1] = P .. 'wake:' .. route
  end
end

-- What a script skipped, returned to Python as name, reason, ... (name: the record's key
-- under the prefix). Quarantined records are also listed in the quarantine set.
local skipped = {}
local function skip(name, reason)
  skipped[#skipped + 1] = name
  skipped[#skipped + 1] = reason
end
local clock
local function quarantine(name, reason)
  clock = clock or clock_text()
  zadd_later(QUARANTINE, clock, name)
  skip(name, reason)
end
-- What to do with the entry m of index key whose record, job id, read_job could not
-- return (why): a missing record's entry is dropped, a malformed record quarantined.
-- (A record set aside from two indexes in one call is named once.)
local aside = {}
local function set_aside(key, m, id, why, in_set)
  if in_set then srem_later(key, m) else zrem_later(key, m) end
  if aside[id] then return end
  aside[id] = true
  if why == MISSING then skip('j:' .. id, MISSING) else quarantine('j:' .. id, why) end
end

local function apply_stage(s)
  for key, list in pairs(s.zrem) do redis.call('ZREM', key, unpack(list)) end
  for key, list in pairs(s.srem) do redis.call('SREM', key, unpack(list)) end
  for key, list in pairs(s.zadd) do redis.call('ZADD', key, unpack(list)) end
  for key, list in pairs(s.sadd) do redis.call('SADD', key, unpack(list)) end
end

-- -- concurrency limits (rules.gate_open) ------------------------------------------------
-- Every job's event is counted in RUNNING_BY_EVENT while it runs; the changes of a call
-- are summed per event and written by commit(), like the counts. A claim holds back a
-- job whose limit is reached in parked:<event>; whenever a job leaves running, or a
-- queued job with a limit is cancelled, commit() moves as many held-back jobs of its
-- event (first in (eta, seq) order) back to their ready:<route> and wakes the route.
local RUNNING_BY_EVENT = P .. 'running_by_event'
local function parked_key(event) return P .. 'parked:' .. event end
local running_deltas, freed, unparked_already = {}, {}, {}
local running_read = {}  -- event -> running count as stored, read once a call
local running_changed = {}  -- events whose count this call changes, once checked

local function entered_running(event)
  running_deltas[event] = (running_deltas[event] or 0) + 1
end
-- THE helper to call when a job leaves 'running' (finish, release, sweep, a cancel of a
-- running job): the event's count goes down and one held-back job of it is let through.
local function left_running(event)
  running_deltas[event] = (running_deltas[event] or 0) - 1
  freed[event] = (freed[event] or 0) + 1
end
-- A queued job with a limit cancelled (m: its index member): out of parked:<event> if
-- it was there; and since a slot may have been waiting for it, the next one is let through.
local function cancelled_gated(event, m)
  zrem_later(parked_key(event), m)
  unparked_already[m] = true
  freed[event] = (freed[event] or 0) + 1
end

-- Running jobs of event now, this call's changes included; nil and the error reply's
-- text when the stored count cannot be read.
local function running_count(event)
  if running_read[event] == nil then
    local v = redis.pcall('HGET', RUNNING_BY_EVENT, event)
    if type(v) == 'table' and v.err then return nil, type_problem(RUNNING_BY_EVENT, 'hash') end
    if v and not is_count(v) then
      return nil, 'SQ_CORRUPT ' .. RUNNING_BY_EVENT .. ' field ' .. event
        .. ' is not an integer; nothing was written'
    end
    running_read[event] = math.max(0, tonumber(v or '0'))
  end
  return running_read[event] + (running_deltas[event] or 0)
end

-- A claim holds back the queued job id (entry m of ready, score eta).
local function hold_back(ready, m, eta, event)
  zrem_later(ready, m)
  zadd_later(parked_key(event), eta, m)
end

-- commit()'s first step: stage the moves of held-back jobs the freed slots let through
-- (reads only, then staged writes). A stale entry (its record gone, malformed, or not
-- queued as that entry) is dropped and lets the next one through.
local function stage_let_through()
  for event, n in pairs(freed) do
    local key = parked_key(event)
    local start = 0
    while n > 0 do
      local got = redis.pcall('ZRANGE', key, start, start + n - 1, 'WITHSCORES')
      if got.err then return type_problem(key, 'zset') end
      if #got == 0 then break end
      start = start + #got / 2
      for k = 1, #got, 2 do
        local m = got[k]
        if n > 0 and not unparked_already[m] then
          unparked_already[m] = true
          local id, seq = parse_member(m)
          local rec, why
          if id then rec, why = read_job(id, {'s', 'r', 'q', 'e'}) end
          zrem_later(key, m)
          if rec and rec.s == 'queued' and rec.q == seq and rec.e == event then
            zadd_later(ready_key(rec.r), got[k + 1], m)
            wake(rec.r)
            n = n - 1
          elseif id and not rec and why ~= MISSING then
            quarantine('j:' .. id, why)
          else
            skip(id and ('j:' .. id) or m, 'not held back as this entry says')
          end
        end
      end
    end
  end
  for event, n in pairs(running_deltas) do
    if n ~= 0 then running_changed[#running_changed + 1] = event end
  end
  if #running_changed > 0 then
    need(RUNNING_BY_EVENT, 'hash')
    for _, event in ipairs(running_changed) do
      local _, problem = running_count(event)
      if problem then return problem end
    end
  end
  return nil
end

local function apply_running_deltas()
  for _, event in ipairs(running_changed) do
    if redis.call('HINCRBY', RUNNING_BY_EVENT, event, running_deltas[event]) <= 0 then
      -- Never below 0: jobs that ran before this count existed leave without going negative.
      redis.call('HDEL', RUNNING_BY_EVENT, event)
    end
  end
end

-- Write everything recorded, once nothing can fail: every key's type is checked and every
-- count changed is an integer. Returns nil, or the error text having written nothing.
local function commit()
  local gates_problem = stage_let_through()
  if gates_problem then return gates_problem end
  for key, kind in pairs(needs) do
    local problem = type_problem(key, kind)
    if problem then return problem end
  end
  local fields = {}
  for field, n in pairs(deltas) do
    if n ~= 0 then fields[#fields + 1] = field end
  end
  if #fields > 0 then
    local got = redis.pcall('HMGET', COUNTS, unpack(fields))
    if got.err then return type_problem(COUNTS, 'hash') end
    for i, v in ipairs(got) do
      if v and not is_count(v) then
        return 'SQ_CORRUPT ' .. COUNTS .. ' field ' .. fields[i] .. ' is not an integer; '
          .. 'nothing was written'
      end
    end
  end
  for _, w in ipairs(writes) do
    if w.zadd then apply_stage(w) else redis.call(unpack(w)) end
  end
  apply_stage(stage)
  for _, field in ipairs(fields) do
    if redis.call('HINCRBY', COUNTS, field, deltas[field]) <= 0 then
      redis.call('HDEL', COUNTS, field)
    end
  end
  apply_running_deltas()
  for _, key in ipairs(to_wake) do wake_key(key) end
  return nil
end

-- The scheduler sleeps until the earliest waiting eta or running lease end. A script
-- calls due_at(t) before it adds time t to scheduled or running (the first call reads
-- the earliest time so far), and wake_scheduler() after commit(), which publishes if
-- some t is earlier. Removals only make that time later, so they can cause a spare
-- wake-up, never a missed one. (A key of another type reads as empty here: commit()
-- refuses to write to it.)
local function head_score(key)
  local head = redis.pcall('ZRANGE', key, 0, 0, 'WITHSCORES')
  if not head.err and head[2] then return tonumber(head[2]) end
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

-- -- what verbs do to a checked record ---------------------------------------------------

-- Take a record out of whichever index its state puts it in, and out of the counts.
local function unlink(id, state, route, seq, owner)
  if state == 'scheduled' or state == 'retrying' then
    zrem_later(SCHEDULED, member(seq, id))
  elseif state == 'queued' then
    zrem_later(ready_key(route), member(seq, id))
  elseif state == 'running' then
    zrem_later(RUNNING, id)
    if owner then srem_later(held_key(owner), id) end
  end
  zrem_later(EXPIRY, id)
  count(state, route, -1)
end

-- Where a stored record waits, given its state.
local function index(id, state, route, seq, eta)
  if state == 'scheduled' or state == 'retrying' then
    due_at(tonumber(eta))
    zadd_later(SCHEDULED, eta, member(seq, id))
  elseif state == 'queued' then
    zadd_later(ready_key(route), eta, member(seq, id))
    wake(route)
  end
  count(state, route, 1)
end

-- A running record stops running (finish, sweep's recovery, release): out of the lease
-- index, its owner's held set (held: that key, or nil) and the running count; owner and
-- lease cleared. The caller then gives it its new state.
local function let_go(key, id, route, held)
  zrem_later(RUNNING, id)
  if held then srem_later(held, id) end
  write('HDEL', key, 'o', 'l')
  count('running', route, -1)
end

-- Handed back unrun (a 'queued' outcome, a released job that never started): the
-- delivery does not count, and the eta and seq keep its place at the head of its queue.
-- deliveries as stored (nil: 0).
local function hand_back(key, id, route, seq, eta, deliveries)
  write('HSET', key, 's', 'queued', 'd', string.format('%d', tonumber(deliveries or '0') - 1))
  index(id, 'queued', route, seq, eta)
end

-- A lost delivery (a lapsed lease, a worker known dead): back on the queue, or 'error'
-- once max_deliveries deliveries were lost (rules.recover and lost_deliveries_error,
-- field for field). deliveries and attempts as stored (nil: 0); max_deliveries and
-- result_ttl with the defaults already filled in; all of them checked. Returns the new
-- state and, for 'error', when the record expires.
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
    write('HSET', key, 's', 'error', 'er', error_json, 'f', now, 'x', expires)
    zadd_later(EXPIRY, expires, id)
    count('error', route, 1)
    return 'error', expires
  end
  write('HSET', key, 's', 'queued')
  index(id, 'queued', route, seq, eta)
  return 'queued'
end

-- rules.remember_error, mirrored: history (as stored, or nil) with the replaced error
-- (er, as stored) appended as the error of attempt `attempt`, which ended in `state`,
-- the oldest entries dropped past HISTORY_KEEP (rules.HISTORY_KEEP). Built from the
-- stored texts, never decoded: cjson would round every time to 14 digits. Entries are
-- joined by ',\n', and compact JSON holds no raw line break of its own, so the line
-- breaks count and cut the entries. (A raw line break in er can only be white space
-- between its tokens, in valid JSON: it becomes a space.)
local HISTORY_KEEP = 20
local function json_number(v)
  if v then return fmt(tonumber(v)) end
  return 'null'
end
local function with_error(history, attempt, state, er, started, finished)
  local entry = '{"attempt":' .. attempt .. ',"state":"' .. state .. '","error":'
    .. (string.gsub(er, '\n', ' ')) .. ',"started_at":' .. json_number(started)
    .. ',"finished_at":' .. json_number(finished) .. '}'
  if not history or history == '[]' then return '[' .. entry .. ']' end
  local kept = string.sub(history, 2, -2)
  local entries = 1
  for _ in string.gmatch(kept, '\n') do entries = entries + 1 end
  while entries >= HISTORY_KEEP do
    kept = string.sub(kept, string.find(kept, '\n', 1, true) + 1)
    entries = entries - 1
  end
  return '[' .. kept .. ',\n' .. entry .. ']'
end

-- put's reads, checks and staged writes (put.lua; fire_schedule.lua for a tick's jobs):
-- the `jobs` jobs given in ARGV from position i on, each as: id, expires_at ('' for
-- none), n, then n strings: field, value, ... (the record without q), which begin with
-- 's' state, 't' eta, 'r' route. Python chose each state (scheduled / queued / retrying /
-- cancelled) with its own float comparison of eta and now. An id whose record exists and
-- has not expired is left untouched (0), as is a malformed one (named in skipped); an
-- expired one that sweep has not deleted yet is replaced (1). Returns one 1/0 per job,
-- or nil and the error to reply with, having staged nothing; the caller commits.
local function put_jobs(now, jobs, i)
  local seq_now = redis.pcall('GET', SEQ)
  if type(seq_now) == 'table' or (seq_now and not is_count(seq_now)) then
    return nil, 'SQ_CORRUPT ' .. SEQ .. ' is not an integer; nothing was written'
  end
  known[SEQ] = true
  -- One INCRBY reserves a seq for every job of the call (a refused job leaves a gap).
  local first_seq = tonumber(seq_now or '0')
  write('INCRBY', SEQ, jobs)
  local answers, taken = {}, {}
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
  return answers
end
