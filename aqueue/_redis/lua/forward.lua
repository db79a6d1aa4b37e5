#!lua flags=allow-oom
-- forward: move due scheduled and retry tasks of one queue to its pending list.
--
-- KEYS[1] scheduled  ZSET  id -> due time (ms)
-- KEYS[2] retry      ZSET  id -> next attempt time (ms)
-- KEYS[3] states     HASH
-- KEYS[4..17] the flow-control keys (QueueKeys.flow(), lib/flow.lua)
-- ARGV[1] now (ms)
-- ARGV[2] at most this many tasks per set and call (bounds the script's run time)
--
-- Returns {moved, next}: how many moved, and the earliest due time still waiting
-- (ms, -1 when both sets are empty) so the caller can sleep exactly until then.
-- include: pending
local scheduled, retry, states = KEYS[1], KEYS[2], KEYS[3]
local F = flow_keys(4)
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local moved = 0
for _, set in ipairs({scheduled, retry}) do
  local ids = redis.call('ZRANGEBYSCORE', set, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    redis.call('ZREM', set, id)
    if make_pending(F, states, id, false) then moved = moved + 1 end
  end
end
local nxt = -1
for _, set in ipairs({scheduled, retry}) do
  local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  if first[2] then
    local t = tonumber(first[2])
    if nxt < 0 or t < nxt then nxt = t end
  end
end
return {moved, nxt}
