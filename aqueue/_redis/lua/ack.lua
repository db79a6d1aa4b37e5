#!lua flags=allow-oom
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
-- KEYS[14..27] the flow-control keys (QueueKeys.flow(), lib/flow.lua): slots are freed
-- ARGV[1] now (ms)
-- ARGV[2] today ("YYYY-MM-DD", UTC)
-- ARGV[3] how many plain acks follow (no retention, no result, no unique lock)
-- ARGV[4..] the plain acks as pairs: id, token; then the others as groups of 6: id,
--          token, retention (ms, 0 = delete now), encoded result ("" = none), unique
--          digest ("" = none), workflow step ("" = none: lib/flow.lua's report_step).
--          Plain acks are the common case: two arguments each instead of six keep the
--          call small.
--
-- Returns the ids whose token no longer matched (a stale worker's late ack): those
-- tasks were recovered by a reaper or cancelled, and this ack must change nothing.
-- include: flow
-- include: forget
-- include: unique
-- include: stats
local lease, tasks, states, completed, results = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local uniq, uniq_exp, stats, retried, errors = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local failed_at, progress, cancels = KEYS[11], KEYS[12], KEYS[13]
local now, day, plain = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local F = flow_keys(14)
local FIRST = 4 -- the first ARGV of the acks

local ids, tokens, extra = {}, {}, {}
local plain_end = FIRST - 1 + 2 * plain
for i = FIRST, plain_end, 2 do
  ids[#ids + 1] = ARGV[i]
  tokens[#ids] = ARGV[i + 1]
end
for i = plain_end + 1, #ARGV, 6 do
  ids[#ids + 1] = ARGV[i]
  tokens[#ids] = ARGV[i + 1]
  extra[#ids] = i
end
if #ids == 0 then return {} end

local current = call_chunked('HMGET', states, ids)
local done, stale, gone, kept, ended = 0, {}, {}, {}, {}
for n, id in ipairs(ids) do
  if current[n] ~= '@' .. tokens[n] then
    stale[#stale + 1] = id
  else
    redis.call('LREM', lease, 1, id)
    done = done + 1
    ended[done] = id
    local i = extra[n]
    local retention = i and tonumber(ARGV[i + 2]) or 0
    if retention > 0 then
      kept[#kept + 1] = id
      redis.call('HSET', states, id, 'completed')
      redis.call('ZADD', completed, now + retention, id)
      if ARGV[i + 3] ~= '' then redis.call('HSET', results, id, ARGV[i + 3]) end
    else
      gone[#gone + 1] = id
    end
    release_unique(uniq, uniq_exp, i and ARGV[i + 4] or '', id)
    if i then report_step(F, ARGV[i + 5], 'completed') end
  end
end
release(F, ended)
if #gone > 0 then
  forget_tasks(gone, tasks, states, retried, errors, failed_at, results, progress, cancels)
end
if #kept > 0 then call_chunked('SREM', cancels, kept) end
if done > 0 then count_processed(stats, day, done) end
return stale
