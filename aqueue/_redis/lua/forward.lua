-- forward: move due scheduled and retry tasks of one queue to its pending list.
--
-- KEYS[1] scheduled  ZSET  id -> due time (ms)
-- KEYS[2] retry      ZSET  id -> next attempt time (ms)
-- KEYS[3] pending    LIST
-- KEYS[4] states     HASH
-- ARGV[1] now (ms)
-- ARGV[2] at most this many tasks per set and call (bounds the script's run time)
--
-- Returns {moved, next}: how many moved, and the earliest due time still waiting
-- (ms, -1 when both sets are empty) so the caller can sleep exactly until then.
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local moved = 0
for k = 1, 2 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[k], id)
    if redis.call('HEXISTS', KEYS[4], id) == 1 then
      redis.call('HSET', KEYS[4], id, 'pending')
      redis.call('LPUSH', KEYS[3], id)
      moved = moved + 1
    end
  end
end
local nxt = -1
for k = 1, 2 do
  local first = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
  if first[2] then
    local t = tonumber(first[2])
    if nxt < 0 or t < nxt then nxt = t end
  end
end
return {moved, nxt}
