#!lua flags=allow-oom
-- acquire_lease.lua: take or renew a named lease (Backend.acquire_lease).
-- KEYS[1]  lease:<name>  HASH  o owner ('' once released), n token, u until, i info JSON
-- KEYS[2]  leases        ZSET  every lease name, score 0 (prefix listing by ZRANGEBYLEX)
-- ARGV[1] name  [2] owner  [3] now  [4] until (now + ttl, added by Python)  [5] info JSON
-- Touches  lease:<name>, leases.
-- Returns  the token, or nil when another owner holds the lease at now (held through
--          until inclusive: unexpired() in _lease.lua, prepended, as for the fence check
--          in sweep and save_schedule); or the error 'SQ_CORRUPT ...' having written
--          nothing, when lease:<name> holds something that is not a lease (read_lease).
-- The token grows by one whenever the holder changes and stays on renewal
-- (rules.taken_lease).

local owner, now = ARGV[2], tonumber(ARGV[3])
local current, why = read_lease(KEYS[1])
if not current then return redis.error_reply(corrupt_lease(KEYS[1], why)) end
local problem = type_problem(KEYS[2], 'zset')
if problem then return redis.error_reply(problem) end
local held = current[1] and current[1] ~= '' and unexpired(current, now)
if held and current[1] ~= owner then return false end
local token
if held then
  token = current[2]
else
  token = string.format('%d', tonumber(current[2] or '0') + 1)
end
redis.call('HSET', KEYS[1], 'o', owner, 'n', token, 'u', ARGV[4], 'i', ARGV[5])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return tonumber(token)
