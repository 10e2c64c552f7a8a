#!lua flags=no-writes
-- schedules.lua: every stored schedule of a queue with its revision (Backend.schedules),
-- read in one step, so no schedule is paired with a revision of another write.
-- KEYS[1]  schedules  HASH  name -> JSON {spec, template, next_fire, updated_at}
-- KEYS[2]  schedrev   HASH  name -> revision (also of removed schedules: skip those)
-- Returns  {HGETALL schedules, HGETALL schedrev}.

return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
