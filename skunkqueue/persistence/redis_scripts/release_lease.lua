#!lua flags=
-- release_lease.lua: give up a lease its owner holds (Backend.release_lease).
-- KEYS[1]  lease:<name>  HASH  o owner, n token (kept), u until, i info
-- ARGV[1]  owner
-- ARGV[2]  channel to PUBLISH on release ('' for none): the scheduler lease's release
--          wakes standby schedulers so one takes the lead at once
-- Touches  lease:<name>.
-- Returns  1 if owner held the lease (now free), else 0.

if redis.call('HGET', KEYS[1], 'o') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'o', '', 'u', '0', 'i', '{}')
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], '1') end
return 1
