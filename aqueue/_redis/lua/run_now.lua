-- run_now: move scheduled, retry or archived tasks of one queue to pending, where they
-- run as soon as a worker is free (Inspector.run_task and run_all).
--
-- KEYS[1] states     HASH  id -> state
-- KEYS[2] scheduled  ZSET
-- KEYS[3] retry      ZSET
-- KEYS[4] archived   ZSET
-- KEYS[5..18] the flow-control keys (QueueKeys.flow(), lib/flow.lua): a task goes to
--         the back of its lane, like an enqueue
-- ARGV[1] "one" or "all"
-- ARGV[2] one: the task id; all: the state to take tasks from ("scheduled", "retry",
--         "archived")
-- ARGV[3] all: at most this many ids per call (bounds the script's run time)
--
-- A task keeps its retry count and last error: an archived task whose retries are spent
-- gets one more attempt.
-- one: returns the task's state before the call (it moved only if that was scheduled,
--      retry or archived), or false when there is no such task.
-- all: returns {moved, taken}: tasks moved, and ids taken off the source set. An id whose
--      state says otherwise is a stale entry: it is dropped, not moved.
-- include: pending
local states, scheduled, retry, archived = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local F = flow_keys(5)
local mode, target, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local sets = {scheduled = scheduled, retry = retry, archived = archived}

local function run(id)
  make_pending(F, states, id, false)
end

if mode == 'one' then
  local id = target
  local state = redis.call('HGET', states, id)
  if not state then return false end
  local set = sets[state]
  if set then
    redis.call('ZREM', set, id)
    run(id)
  end
  return state
end

local state = target
local popped = redis.call('ZPOPMIN', sets[state], limit)
local moved = 0
for i = 1, #popped, 2 do
  local id = popped[i]
  if redis.call('HGET', states, id) == state then
    run(id)
    moved = moved + 1
  end
end
return {moved, #popped / 2}
