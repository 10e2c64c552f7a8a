#!lua flags=
-- retry.lua: put finished jobs back on their route by hand (Backend.retry; rules.retry).
-- KEYS[1..6]  prefix, counts, scheduled, running, expiry, seq (see _common.lua; job keys
--             j:<id>, ready:<route> and wake:<route> are built from the prefix)
-- ARGV[1] now  ARGV[2..] job ids
-- Touches     j:<id>, expiry, ready:<route> + wake:<route>, seq, counts.
-- Returns     {one 1/0 per id, skipped}: 1 where the record was error or cancelled, had
--             not expired and was well-formed (a malformed one is left as it is and
--             named in skipped); it is then queued with eta now and the next seq, its
--             error appended to its history (hi) and cleared, result, finish, expiry,
--             owner and lease cleared, deliveries set to attempts. An id given twice is
--             retried once. Or the error 'SQ_CORRUPT ...' having written nothing.

local now = ARGV[1]
local seq_now = redis.pcall('GET', SEQ)
if type(seq_now) == 'table' or (seq_now and not is_count(seq_now)) then
  return redis.error_reply('SQ_CORRUPT ' .. SEQ .. ' is not an integer; nothing was written')
end
known[SEQ] = true
local next_seq = tonumber(seq_now or '0')
local answers, done = {}, {}
for k = 2, #ARGV do
  local id = ARGV[k]
  local rec, why = nil, nil
  if not done[id] then
    rec, why = read_job(id, {'s', 'r', 'q', 'x', 'a', 'b', 'f', 'er', 'hi', 't', 'c'})
  end
  local state = rec and rec.s
  if (state == 'error' or state == 'cancelled')
      and not (rec.x and tonumber(rec.x) <= tonumber(now)) then
    done[id] = true
    local key = job_key(id)
    unlink(id, state, rec.r, rec.q, nil)
    next_seq = next_seq + 1
    local seq = string.format('%d', next_seq)
    local fields = {'s', 'queued', 't', now, 'q', seq, 'd', rec.a or '0'}
    if not rec.c then  -- created_at was left out as equal to the eta, which changes now
      fields[#fields + 1] = 'c'
      fields[#fields + 1] = rec.t
    end
    if rec.er then
      fields[#fields + 1] = 'hi'
      fields[#fields + 1] = with_error(rec.hi, rec.a or '0', state, rec.er, rec.b, rec.f)
    end
    write('HSET', key, unpack(fields))
    write('HDEL', key, 'er', 'rs', 'f', 'x', 'o', 'l')
    index(id, 'queued', rec.r, seq, now)
    answers[#answers + 1] = 1
  else
    if why and why ~= MISSING then skip('j:' .. id, why) end
    answers[#answers + 1] = 0
  end
end
if next_seq > tonumber(seq_now or '0') then
  write('INCRBY', SEQ, next_seq - tonumber(seq_now or '0'))
end
local problem = commit()
if problem then return redis.error_reply(problem) end
return {answers, skipped}
