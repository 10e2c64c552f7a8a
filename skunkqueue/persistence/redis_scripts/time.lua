#!lua flags=no-writes
-- time.lua: the server's clock (Backend.now reads it now and then).
-- KEYS[1]  the queue's key prefix: it only routes the call to the node of the queue's slot,
--          whose clock decides for the queue on a cluster.
-- Returns  {seconds, microseconds} (TIME).

return redis.call('TIME')
