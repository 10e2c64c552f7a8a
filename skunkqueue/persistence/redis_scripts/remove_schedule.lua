#!lua flags=allow-oom
-- remove_schedule.lua: delete a stored schedule (Backend.remove_schedule).
-- KEYS[1]  schedules  HASH  name -> JSON
-- ARGV[1]  name
-- Touches  schedules. The name's revision (schedrev) stays, so the name stored again
--          gets a newer one than any a leader may have read.
-- Returns  1 if there was one, else 0.

return redis.call('HDEL', KEYS[1], ARGV[1])
