#!lua flags=allow-oom
-- recount: flow control's housekeeping for one queue (the janitor runs it each sweep).
--
--   * The slots taken per limit (`running`) are counted again from the holds of the
--     active tasks (`hold`). Claims and releases keep them equal in one atomic step each,
--     so they only differ after the server lost recent writes (a restart that replayed
--     an older AOF); a limit that counted too many lets its waiting lanes take their
--     turn again.
--   * Rate windows of limits with no recent start are dropped (`rlim` says when each
--     window's last start grows old), so keys that come and go leave nothing behind.
--
-- KEYS[1..14] the flow-control keys (QueueKeys.flow(), lib/flow.lua)
-- ARGV[1] now (server ms are read here; this is the worker's, unused by the rate part)
-- ARGV[2] at most this many rate windows dropped per call
--
-- Returns {limits whose count was wrong, rate windows dropped}.
-- include: flow
local F = flow_keys(1)
local limit_n = tonumber(ARGV[2])
local counts, held = {}, 0
for _, h in ipairs(redis.call('HVALS', F.hold)) do
  held = held + 1
  for limit in string.gmatch(h, '[^\1]+') do counts[limit] = (counts[limit] or 0) + 1 end
end
local fixed, wake = 0, false
local running = redis.call('HGETALL', F.running)
for i = 1, #running, 2 do
  local limit, n = running[i], tonumber(running[i + 1])
  local want = counts[limit]
  if limit == '#held' then want = held end
  want = want or 0
  counts[limit] = nil
  if n ~= want then
    fixed = fixed + 1
    if want == 0 then
      redis.call('HDEL', F.running, limit)
    else
      redis.call('HSET', F.running, limit, want)
    end
    if want < n then
      wake = true
      if limit ~= 'q' and limit ~= '#held' then unpark(F, limit) end
    end
  end
end
-- Holds whose limit had no count at all.
for limit, n in pairs(counts) do
  redis.call('HSET', F.running, limit, n)
  fixed = fixed + 1
end
if held > 0 and not redis.call('HGET', F.running, '#held') then
  redis.call('HSET', F.running, '#held', held)
end
if wake then ring(F) end

local now = server_ms()
local old = redis.call('ZRANGEBYSCORE', F.rlim, '-inf', now, 'LIMIT', 0, limit_n)
for _, limit in ipairs(old) do
  redis.call('ZREMRANGEBYLEX', F.rlog, '[' .. limit .. '\1', '(' .. limit .. '\2')
  redis.call('ZREM', F.rlim, limit)
end
return {fixed, #old}
