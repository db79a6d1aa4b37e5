-- ack: finish successful attempts of one queue, fenced by their tokens.
--
-- KEYS[1] lease      LIST  the worker's lease list for this queue
-- KEYS[2] tasks      HASH  id -> message
-- KEYS[3] states     HASH  id -> state
-- KEYS[4] completed  ZSET  id -> expiry (ms) of a completed task kept for retention
-- KEYS[5] results    HASH  id -> encoded result
-- KEYS[6] uniq       HASH  unique digest -> id
-- KEYS[7] uniq_exp   ZSET  unique digest -> expiry
-- KEYS[8] stats      HASH  "p"/"f" totals, "p:<day>"/"f:<day>" per UTC day
-- KEYS[9] retried    HASH  id -> retry count
-- KEYS[10] errors    HASH  id -> last error
-- KEYS[11] failed_at HASH  id -> last failure time (ms)
-- KEYS[12] progress  HASH  id -> encoded progress
-- KEYS[13] cancels   SET   ids whose cancellation was asked (done now: forgotten)
-- ARGV[1] now (ms)
-- ARGV[2] today ("YYYY-MM-DD", UTC)
-- ARGV[3] how many plain acks follow (no retention, no result, no unique lock)
-- ARGV[4..] the plain acks as pairs: id, token; then the others as groups of 5: id,
--          token, retention (ms, 0 = delete now), encoded result ("" = none), unique
--          digest ("" = none). Plain acks are the common case: two arguments each
--          instead of five keep the call small.
--
-- Returns the ids whose token no longer matched (a stale worker's late ack): those
-- tasks were recovered by a reaper or cancelled, and this ack must change nothing.
local now = tonumber(ARGV[1])
local done, stale = 0, {}

local function finish(id, token, retention, result, digest)
  if redis.call('HGET', KEYS[3], id) ~= '@' .. token then
    stale[#stale + 1] = id
    return
  end
  redis.call('LREM', KEYS[1], 1, id)
  if retention > 0 then
    redis.call('HSET', KEYS[3], id, 'completed')
    redis.call('ZADD', KEYS[4], now + retention, id)
    if result ~= '' then redis.call('HSET', KEYS[5], id, result) end
  else
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[9], id)
    redis.call('HDEL', KEYS[10], id)
    redis.call('HDEL', KEYS[11], id)
    redis.call('HDEL', KEYS[12], id)
  end
  redis.call('SREM', KEYS[13], id)
  if digest ~= '' and redis.call('HGET', KEYS[6], digest) == id then
    redis.call('HDEL', KEYS[6], digest)
    redis.call('ZREM', KEYS[7], digest)
  end
  done = done + 1
end

local plain_end = 3 + 2 * tonumber(ARGV[3])
for i = 4, plain_end, 2 do
  finish(ARGV[i], ARGV[i + 1], 0, '', '')
end
for i = plain_end + 1, #ARGV, 5 do
  finish(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4])
end
if done > 0 then
  redis.call('HINCRBY', KEYS[8], 'p', done)
  redis.call('HINCRBY', KEYS[8], 'p:' .. ARGV[2], done)
end
return stale
