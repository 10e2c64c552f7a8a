#!lua flags=allow-oom
-- release_lease.lua: give up a lease its owner holds (Backend.release_lease).
-- KEYS[1]  lease:<name>  HASH  o owner, n token (kept), u until, i info
-- ARGV[1]  owner
-- ARGV[2]  channel to PUBLISH on release ('' for none): the scheduler lease's release
--          wakes standby schedulers so one takes the lead at once
-- Touches  lease:<name>.
-- Returns  1 if owner held the lease (now free), else 0; or the error 'SQ_CORRUPT ...'
--          having written nothing, when lease:<name> holds something that is not a lease
--          (read_lease in _lease.lua, prepended).

local lease, why = read_lease(KEYS[1])
if not lease then return redis.error_reply(corrupt_lease(KEYS[1], why)) end
if lease[1] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'o', '', 'u', '0', 'i', '{}')
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], '1') end
return 1
