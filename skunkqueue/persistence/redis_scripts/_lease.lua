-- _lease.lua: the lease rules of rules.py that scripts check. redis_support.py prepends
-- this file to sweep, fire_schedule, save_schedule and acquire_lease (after _common.lua
-- where a script has both), so each rule below is written once in Lua, as it is once in
-- Python.
--
-- A lease is a HASH  lease:<name>  o owner ('' once released), n token, u until,
-- i info JSON; a released one keeps its token and holds until 0. A lease is held through
-- its until inclusive: at until itself its holder's fence still holds and no other owner
-- may take it, so no instant has two holders.

-- The lease at key as {owner, token, until} (strings; each false where there is none).
local function read_lease(key) return redis.call('HMGET', key, 'o', 'n', 'u') end

-- Whether a lease read by read_lease has not ended at now (a number): until >= now.
local function unexpired(lease, now) return tonumber(lease[3]) >= now end

-- rules.fence_holds: whether the fence (owner, token, as strings) is the current holder
-- of the lease at key, unexpired at now (a number).
local function fence_holds(key, owner, token, now)
  local lease = read_lease(key)
  return lease[1] == owner and lease[2] == token and unexpired(lease, now)
end
