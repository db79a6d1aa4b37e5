#!lua flags=allow-oom
-- fail: end a failed attempt of one task, fenced by its token.
--
-- KEYS[1] lease      LIST  the worker's lease list for this queue
-- KEYS[2] tasks      HASH  id -> message
-- KEYS[3] states     HASH  id -> state
-- KEYS[4] retry      ZSET  id -> next attempt time (ms)
-- KEYS[5] archived   ZSET  id -> archive time (ms)
-- KEYS[6] uniq       HASH  unique digest -> id
-- KEYS[7] uniq_exp   ZSET
-- KEYS[8] stats      HASH
-- KEYS[9] retried    HASH  id -> retry count
-- KEYS[10] errors    HASH  id -> last error
-- KEYS[11] failed_at HASH  id -> last failure time (ms)
-- KEYS[12] progress  HASH  id -> encoded progress
-- KEYS[13] results   HASH  id -> encoded result
-- KEYS[14] cancels   SET   ids whose cancellation was asked
-- KEYS[15..28] the flow-control keys (QueueKeys.flow(), lib/flow.lua): slots are freed
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
-- ARGV[10] workflow step ("" = none): an end of the task is reported to its flow
--
-- Returns 1, or 0 when the token no longer matched (nothing was changed).
-- include: flow
-- include: forget
-- include: unique
-- include: archive_task
-- include: stats
local lease, tasks, states, retry, archived = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local uniq, uniq_exp, stats, retried, errors = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local failed_at, progress, results, cancels = KEYS[11], KEYS[12], KEYS[13], KEYS[14]
local now, day, id, token, action = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local next_at, error_text, digest, counted = tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9]
local step = ARGV[10]
if redis.call('HGET', states, id) ~= '@' .. token then return 0 end
redis.call('LREM', lease, 1, id)
local F = flow_keys(15)
release(F, {id})
if redis.call('SREM', cancels, id) == 1 and action ~= 'revoke' then
  -- Cancelled while it ran: whatever it raised, it ends archived as cancelled.
  action = 'archive'
  error_text = 'cancelled'
end
if counted == '1' then count_failed(stats, day) end
if action == 'revoke' then
  -- A final state: the unique lock goes with everything else.
  release_unique(uniq, uniq_exp, digest, id)
  forget_tasks({id}, tasks, states, retried, errors, failed_at, results, progress, cancels)
  report_step(F, step, 'revoked|' .. error_text)
  return 1
end
redis.call('HSET', errors, id, error_text)
redis.call('HSET', failed_at, id, now)
if action == 'retry' or action == 'again' then
  if action == 'retry' then redis.call('HINCRBY', retried, id, 1) end
  redis.call('HDEL', progress, id)  -- the next attempt reports its own progress
  redis.call('HSET', states, id, 'retry')
  redis.call('ZADD', retry, next_at, id)
  return 1
end
archive_task(states, archived, uniq, uniq_exp, id, now, digest)
report_step(F, step, 'archived|' .. error_text)
return 1
