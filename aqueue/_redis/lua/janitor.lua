#!lua flags=allow-oom
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
-- include: forget
local completed, archived, tasks, states = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local retried, errors, failed_at, results = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local progress, uniq, uniq_exp, cancels = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local now, max_size, max_age, limit =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local deleted = 0

local function forget(id)
  forget_tasks({id}, tasks, states, retried, errors, failed_at, results, progress, cancels)
  deleted = deleted + 1
end

local more = 0
local done = redis.call('ZRANGEBYSCORE', completed, '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(done) do
  redis.call('ZREM', completed, id)
  -- The id may have been reused since (deleted, then enqueued again): only a task
  -- still completed is this entry's.
  if redis.call('HGET', states, id) == 'completed' then forget(id) end
end
if #done == limit then more = 1 end

local old = redis.call('ZRANGEBYSCORE', archived, '-inf', now - max_age, 'LIMIT', 0, limit)
for _, id in ipairs(old) do
  redis.call('ZREM', archived, id)
  if redis.call('HGET', states, id) == 'archived' then forget(id) end
end
if #old == limit then more = 1 end

local over = redis.call('ZCARD', archived) - max_size
if over > 0 then
  local n = math.min(over, limit)
  local oldest = redis.call('ZRANGE', archived, 0, n - 1)
  for _, id in ipairs(oldest) do
    redis.call('ZREM', archived, id)
    if redis.call('HGET', states, id) == 'archived' then forget(id) end
  end
  if over > limit then more = 1 end
end

local released = 0
local locks = redis.call('ZRANGEBYSCORE', uniq_exp, '-inf', now, 'LIMIT', 0, limit)
for _, digest in ipairs(locks) do
  redis.call('ZREM', uniq_exp, digest)
  redis.call('HDEL', uniq, digest)
  released = released + 1
end
if #locks == limit then more = 1 end
return {deleted, released, more}
