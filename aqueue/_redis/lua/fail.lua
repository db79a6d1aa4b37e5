-- fail: end a failed attempt of one task, fenced by its token.
--
-- KEYS[1] lease      LIST  the worker's lease list for this queue
-- KEYS[2] pending    LIST
-- KEYS[3] tasks      HASH  id -> message
-- KEYS[4] states     HASH  id -> state
-- KEYS[5] retry      ZSET  id -> next attempt time (ms)
-- KEYS[6] archived   ZSET  id -> archive time (ms)
-- KEYS[7] uniq       HASH  unique digest -> id
-- KEYS[8] uniq_exp   ZSET
-- KEYS[9] stats      HASH
-- KEYS[10] retried   HASH  id -> retry count
-- KEYS[11] errors    HASH  id -> last error
-- KEYS[12] failed_at HASH  id -> last failure time (ms)
-- KEYS[13] progress  HASH  id -> encoded progress
-- KEYS[14] results   HASH  id -> encoded result
-- KEYS[15] cancels   SET   ids whose cancellation was asked
-- ARGV[1] now (ms)
-- ARGV[2] today ("YYYY-MM-DD", UTC)
-- ARGV[3] id
-- ARGV[4] token
-- ARGV[5] action: "retry" (counts a retry) | "again" (retry without counting one: the
--         error was not a failure) | "archive" | "revoke"
-- ARGV[6] next attempt time (ms), for "retry" and "again"
-- ARGV[7] error text
-- ARGV[8] unique digest ("" = none)
-- ARGV[9] 1 to count the attempt as a failure in the stats, 0 not to
--
-- Returns 1, or 0 when the token no longer matched (nothing was changed).
local now, id = tonumber(ARGV[1]), ARGV[3]
if redis.call('HGET', KEYS[4], id) ~= '@' .. ARGV[4] then return 0 end
redis.call('LREM', KEYS[1], 1, id)
local action = ARGV[5]
if redis.call('SREM', KEYS[15], id) == 1 and action ~= 'revoke' then
  -- Cancelled while it ran: whatever it raised, it ends archived as cancelled.
  action = 'archive'
  ARGV[7] = 'cancelled'
end
if ARGV[9] == '1' then
  redis.call('HINCRBY', KEYS[9], 'p', 1)
  redis.call('HINCRBY', KEYS[9], 'p:' .. ARGV[2], 1)
  redis.call('HINCRBY', KEYS[9], 'f', 1)
  redis.call('HINCRBY', KEYS[9], 'f:' .. ARGV[2], 1)
end
if action == 'revoke' then
  for k = 3, 4 do redis.call('HDEL', KEYS[k], id) end
  for k = 10, 14 do redis.call('HDEL', KEYS[k], id) end
else
  redis.call('HSET', KEYS[11], id, ARGV[7])
  redis.call('HSET', KEYS[12], id, now)
  if action == 'retry' or action == 'again' then
    if action == 'retry' then redis.call('HINCRBY', KEYS[10], id, 1) end
    redis.call('HDEL', KEYS[13], id)  -- the next attempt reports its own progress
    redis.call('HSET', KEYS[4], id, 'retry')
    redis.call('ZADD', KEYS[5], tonumber(ARGV[6]), id)
    return 1
  end
  redis.call('HSET', KEYS[4], id, 'archived')
  redis.call('ZADD', KEYS[6], now, id)
end
-- Archived or revoked: a final state, so the unique lock goes.
local digest = ARGV[8]
if digest ~= '' and redis.call('HGET', KEYS[7], digest) == id then
  redis.call('HDEL', KEYS[7], digest)
  redis.call('ZREM', KEYS[8], digest)
end
return 1
