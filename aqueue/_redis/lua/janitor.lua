-- janitor: delete what has outlived its welcome in one queue, in bounded steps.
--
--   * completed tasks whose retention has passed;
--   * archived tasks older than the archive's maximum age, and the oldest ones past its
--     maximum size;
--   * unique locks whose ttl has passed (their task is still live, or gone long ago).
-- Deleting a task removes every field it has in every per-queue hash, so nothing leaks.
--
-- KEYS[1] completed  ZSET  id -> expiry (ms)
-- KEYS[2] archived   ZSET  id -> archive time (ms)
-- KEYS[3] tasks      HASH
-- KEYS[4] states     HASH
-- KEYS[5] retried    HASH
-- KEYS[6] errors     HASH
-- KEYS[7] failed_at  HASH
-- KEYS[8] results    HASH
-- KEYS[9] progress   HASH
-- KEYS[10] uniq      HASH  digest -> id
-- KEYS[11] uniq_exp  ZSET  digest -> expiry (ms)
-- KEYS[12] cancels   SET
-- ARGV[1] now (ms)
-- ARGV[2] maximum archive size (tasks)
-- ARGV[3] maximum archive age (ms)
-- ARGV[4] at most this many deletions of each kind per call
--
-- Returns {deleted tasks, released locks, 1 if more work is left else 0}.
local now, max_size, max_age, limit =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local deleted = 0

local function forget(id)
  for k = 3, 9 do redis.call('HDEL', KEYS[k], id) end
  redis.call('SREM', KEYS[12], id)
  deleted = deleted + 1
end

local more = 0
local done = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(done) do
  redis.call('ZREM', KEYS[1], id)
  -- The id may have been reused since (deleted, then enqueued again): only a task
  -- still completed is this entry's.
  if redis.call('HGET', KEYS[4], id) == 'completed' then forget(id) end
end
if #done == limit then more = 1 end

local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - max_age, 'LIMIT', 0, limit)
for _, id in ipairs(old) do
  redis.call('ZREM', KEYS[2], id)
  if redis.call('HGET', KEYS[4], id) == 'archived' then forget(id) end
end
if #old == limit then more = 1 end

local over = redis.call('ZCARD', KEYS[2]) - max_size
if over > 0 then
  local n = math.min(over, limit)
  local oldest = redis.call('ZRANGE', KEYS[2], 0, n - 1)
  for _, id in ipairs(oldest) do
    redis.call('ZREM', KEYS[2], id)
    if redis.call('HGET', KEYS[4], id) == 'archived' then forget(id) end
  end
  if over > limit then more = 1 end
end

local released = 0
local locks = redis.call('ZRANGEBYSCORE', KEYS[11], '-inf', now, 'LIMIT', 0, limit)
for _, digest in ipairs(locks) do
  redis.call('ZREM', KEYS[11], digest)
  redis.call('HDEL', KEYS[10], digest)
  released = released + 1
end
if #locks == limit then more = 1 end
return {deleted, released, more}
