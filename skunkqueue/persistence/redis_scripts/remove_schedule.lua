#!lua flags=
-- remove_schedule.lua: delete a stored schedule (Backend.remove_schedule).
-- KEYS[1]  schedules  HASH  name -> JSON
-- ARGV[1]  name
-- Touches  schedules.
-- Returns  1 if there was one, else 0.

return redis.call('HDEL', KEYS[1], ARGV[1])
