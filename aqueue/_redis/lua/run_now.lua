-- run_now: move scheduled, retry or archived tasks of one queue to pending, where they
-- run as soon as a worker is free (Inspector.run_task and run_all).
--
-- KEYS[1] states     HASH  id -> state
-- KEYS[2] pending    LIST  new ids are LPUSHed: the back of the queue, like an enqueue
-- KEYS[3] scheduled  ZSET
-- KEYS[4] retry      ZSET
-- KEYS[5] archived   ZSET
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
local sets = {scheduled = KEYS[3], retry = KEYS[4], archived = KEYS[5]}

local function run(id)
  redis.call('HSET', KEYS[1], id, 'pending')
  redis.call('LPUSH', KEYS[2], id)
end

if ARGV[1] == 'one' then
  local id = ARGV[2]
  local state = redis.call('HGET', KEYS[1], id)
  if not state then return false end
  local set = sets[state]
  if set then
    redis.call('ZREM', set, id)
    run(id)
  end
  return state
end

local state = ARGV[2]
local popped = redis.call('ZPOPMIN', sets[state], tonumber(ARGV[3]))
local moved = 0
for i = 1, #popped, 2 do
  local id = popped[i]
  if redis.call('HGET', KEYS[1], id) == state then
    run(id)
    moved = moved + 1
  end
end
return {moved, #popped / 2}
