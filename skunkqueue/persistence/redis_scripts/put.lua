#!lua flags=
-- put.lua: store new jobs (Backend.put), all of one call in one script run.
-- KEYS[1..6]  prefix, counts, scheduled, running, expiry, seq (see _common.lua; job
--             keys j:<id> and ready:<route> are built from the prefix)
-- ARGV[1]     now
-- ARGV[2]     number of jobs, then for each job:
--               id, expires_at ('' for none), n, then n strings: field, value, ...
--               (the record without q): see put_jobs in _common.lua
-- Touches     j:<id> (HASH), scheduled or ready:<route> (ZSET), expiry (ZSET), counts,
--             seq, wake:<route> (LIST), PUBLISH wake:scheduler if an eta is the new earliest.
-- Returns     {one 1/0 per job, skipped}: 0 where a record with that id exists and has not
--             expired (an expired one that sweep has not deleted yet is replaced), or is
--             malformed (then never replaced; skipped names it: 'j:<id>', why); or the
--             error 'SQ_CORRUPT ...' having written nothing (see commit() in _common.lua).

local answers, refused = put_jobs(tonumber(ARGV[1]), tonumber(ARGV[2]), 3)
if not answers then return redis.error_reply(refused) end
local problem = commit()
if problem then return redis.error_reply(problem) end
wake_scheduler()
return {answers, skipped}
