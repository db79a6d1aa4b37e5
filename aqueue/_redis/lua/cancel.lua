#!lua flags=allow-oom
-- cancel: cancel one task. A waiting task (pending, scheduled, retry) is archived at once
-- without running; an active task is marked in the cancels set, which its worker
-- honours (woken by pub/sub, or at its next heartbeat if it missed the message); a
-- task already completed or archived is left as it is.
--
-- KEYS[1] states     HASH
-- KEYS[2] scheduled  ZSET
-- KEYS[3] retry      ZSET
-- KEYS[4] archived   ZSET
-- KEYS[5] errors     HASH
-- KEYS[6] failed_at  HASH
-- KEYS[7] uniq       HASH
-- KEYS[8] uniq_exp   ZSET
-- KEYS[9] cancels    SET   ids of active tasks whose cancellation was asked
-- KEYS[10..23] the flow-control keys (QueueKeys.flow(), lib/flow.lua; tasks among them)
-- ARGV[1] now (ms)
-- ARGV[2] id
--
-- Returns the task's state before the call ("pending", "active", "completed", ...), or
-- false when there is no such task.
-- include: flow
-- include: archive_task
local states, scheduled, retry, archived = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local errors, failed_at, uniq, uniq_exp = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local cancels = KEYS[9]
local F = flow_keys(10)
local tasks = F.tasks
local now, id = tonumber(ARGV[1]), ARGV[2]
local state = redis.call('HGET', states, id)
if not state then return false end
if string.sub(state, 1, 1) == '@' then
  redis.call('SADD', cancels, id)
  return 'active'
end
if state == 'completed' or state == 'archived' then return state end
if state == 'pending' then
  unready(F, id)
elseif state == 'scheduled' then
  redis.call('ZREM', scheduled, id)
else
  redis.call('ZREM', retry, id)
end
redis.call('HSET', errors, id, 'cancelled')
redis.call('HSET', failed_at, id, now)
local _, digest, _, _, _, step = read_header(redis.call('HGET', tasks, id))
archive_task(states, archived, uniq, uniq_exp, id, now, digest)
report_step(F, step, 'archived|cancelled')
return state
