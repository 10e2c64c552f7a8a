-- _lease.lua: the lease rules of rules.py that scripts check. redis_support.py prepends
-- this file to sweep, fire_schedule, save_schedule, acquire_lease, release_lease and
-- forget_leases (after _checks.lua, and _common.lua where a script has both), so each rule
-- below is written once in Lua, as it is once in Python.
--
-- A lease is a HASH  lease:<name>  o owner ('' once released), n token, u until,
-- i info JSON; a released one keeps its token and holds until 0. A lease is held through
-- its until inclusive: at until itself its holder's fence still holds and no other owner
-- may take it, so no instant has two holders.

-- The lease at key as {owner, token, until} (strings; each false where there is no
-- lease), or nil and why the hash there is not a lease (redis.py's _leases reads the same
-- four fields): a script never writes over such a hash, nor counts it as a holder.
local function read_lease(key)
  local lease = redis.pcall('HMGET', key, 'o', 'n', 'u', 'i')
  if lease.err then return nil, 'not a hash' end
  if not (lease[1] or lease[2] or lease[3] or lease[4]) then return lease end
  if not (lease[1] and lease[2] and lease[3] and lease[4]) then return nil, 'a field is missing' end
  if not is_count(lease[2]) then return nil, 'token n is not an integer' end
  if not is_number(lease[3]) then return nil, 'until u is not a number' end
  if not is_json(lease[4]) then return nil, 'info i is not JSON' end
  return lease
end

-- The error reply for a lease that read_lease refused, naming its key.
local function corrupt_lease(key, why)
  return 'SQ_CORRUPT ' .. key .. ' is not a lease (' .. why .. '); it is left as it is: '
    .. 'delete the key to free the lease'
end

-- Whether a lease read by read_lease has not ended at now (a number): until >= now.
local function unexpired(lease, now) return lease[3] and tonumber(lease[3]) >= now end

-- rules.fence_holds: whether the fence (owner, token, as strings) is the current holder
-- of the lease at key, unexpired at now (a number). A hash that is not a lease holds no
-- fence.
local function fence_holds(key, owner, token, now)
  local lease = read_lease(key)
  return lease ~= nil and lease[1] == owner and lease[2] == token and unexpired(lease, now)
end
