-- _checks.lua: what a stored value must look like before a script acts on it.
-- redis_support.py prepends this file to every script (after its '#!lua flags=' line),
-- so the job snippets (_common.lua), the lease snippet (_lease.lua) and the scripts share
-- one definition of each check.

-- A finite number as both Lua and Python's float() read it: decimal digits only (Lua
-- would also take hex, Python underscores and 'nan'), so each side agrees on the value.
local function is_number(v)
  if string.find(v, '[^%d%.eE%+%-]') then return false end
  local n = tonumber(v)
  return n ~= nil and n == n and n ~= math.huge and n ~= -math.huge
end

-- An integer HINCRBY and Python's int() both take, exact as a Lua number.
local function is_count(v) return #v <= 16 and string.find(v, '^%-?%d+$') ~= nil end

-- Text Python's json.loads takes (cjson is the nearest check Lua has).
local function is_json(v) return (pcall(cjson.decode, v)) end

-- The server's time as text, for the score of a quarantined record: when it was set
-- aside, for whoever looks; no decision is made by it.
local function clock_text()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end

-- The error reply text when key holds another type than kind (a write to it would fail
-- part-way through a script), or nil when it holds kind or nothing.
local function type_problem(key, kind)
  local found = redis.call('TYPE', key)['ok']
  if found == 'none' or found == kind then return nil end
  return 'SQ_CORRUPT ' .. key .. ' holds a ' .. found .. ', not a ' .. kind
    .. '; nothing was written'
end
