-- cancel: cancel one task. A waiting task (pending, scheduled, retry) is archived at once
-- without running; an active task is marked in the cancels set, which its worker
-- honours (woken by pub/sub, or at its next heartbeat if it missed the message); a
-- task already completed or archived is left as it is.
--
-- KEYS[1] states     HASH
-- KEYS[2] pending    LIST
-- KEYS[3] scheduled  ZSET
-- KEYS[4] retry      ZSET
-- KEYS[5] archived   ZSET
-- KEYS[6] errors     HASH
-- KEYS[7] failed_at  HASH
-- KEYS[8] uniq       HASH
-- KEYS[9] uniq_exp   ZSET
-- KEYS[10] tasks     HASH  id -> "<max_retry>|<unique digest>|<body>"
-- KEYS[11] cancels   SET   ids of active tasks whose cancellation was asked
-- ARGV[1] now (ms)
-- ARGV[2] id
--
-- Returns the task's state before the call ("pending", "active", "completed", ...), or
-- false when there is no such task.
local id, now = ARGV[2], tonumber(ARGV[1])
local state = redis.call('HGET', KEYS[1], id)
if not state then return false end
if string.sub(state, 1, 1) == '@' then
  redis.call('SADD', KEYS[11], id)
  return 'active'
end
if state == 'completed' or state == 'archived' then return state end
if state == 'pending' then
  redis.call('LREM', KEYS[2], 0, id)
elseif state == 'scheduled' then
  redis.call('ZREM', KEYS[3], id)
else
  redis.call('ZREM', KEYS[4], id)
end
redis.call('HSET', KEYS[1], id, 'archived')
redis.call('ZADD', KEYS[5], now, id)
redis.call('HSET', KEYS[6], id, 'cancelled')
redis.call('HSET', KEYS[7], id, now)
local msg = redis.call('HGET', KEYS[10], id)
local digest = msg and string.match(msg, '^%d+|([^|]*)|') or ''
if digest ~= '' and redis.call('HGET', KEYS[8], digest) == id then
  redis.call('HDEL', KEYS[8], digest)
  redis.call('ZREM', KEYS[9], digest)
end
return state
