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
-- include: chunked

local ids, tokens, extra = {}, {}, {}
local plain_end = 3 + 2 * tonumber(ARGV[3])
for i = 4, plain_end, 2 do
  ids[#ids + 1] = ARGV[i]
  tokens[#ids] = ARGV[i + 1]
end
for i = plain_end + 1, #ARGV, 5 do
  ids[#ids + 1] = ARGV[i]
  tokens[#ids] = ARGV[i + 1]
  extra[#ids] = i
end
if #ids == 0 then return {} end

local states = call_chunked('HMGET', KEYS[3], ids)
local done, stale, gone, finished = 0, {}, {}, {}
for n, id in ipairs(ids) do
  if states[n] ~= '@' .. tokens[n] then
    stale[#stale + 1] = id
  else
    redis.call('LREM', KEYS[1], 1, id)
    finished[#finished + 1] = id
    done = done + 1
    local i = extra[n]
    local retention = i and tonumber(ARGV[i + 2]) or 0
    if retention > 0 then
      redis.call('HSET', KEYS[3], id, 'completed')
      redis.call('ZADD', KEYS[4], now + retention, id)
      if ARGV[i + 3] ~= '' then redis.call('HSET', KEYS[5], id, ARGV[i + 3]) end
    else
      gone[#gone + 1] = id
    end
    local digest = i and ARGV[i + 4] or ''
    if digest ~= '' and redis.call('HGET', KEYS[6], digest) == id then
      redis.call('HDEL', KEYS[6], digest)
      redis.call('ZREM', KEYS[7], digest)
    end
  end
end
if #gone > 0 then
  for _, key in ipairs({KEYS[2], KEYS[3], KEYS[9], KEYS[10], KEYS[11], KEYS[12]}) do
    call_chunked('HDEL', key, gone)
  end
end
if done > 0 then
  call_chunked('SREM', KEYS[13], finished)
  redis.call('HINCRBY', KEYS[8], 'p', done)
  redis.call('HINCRBY', KEYS[8], 'p:' .. ARGV[2], done)
end
return stale
