#!lua flags=allow-oom
-- delete: delete tasks of one queue that are not active, with everything stored about
-- them (Inspector.delete_task and delete_all).
--
-- KEYS[1] states     HASH  id -> state
-- KEYS[2] scheduled  ZSET
-- KEYS[3] retry      ZSET
-- KEYS[4] archived   ZSET
-- KEYS[5] completed  ZSET
-- KEYS[6] retried    HASH
-- KEYS[7] errors     HASH
-- KEYS[8] failed_at  HASH
-- KEYS[9] results    HASH
-- KEYS[10] progress  HASH
-- KEYS[11] uniq      HASH  unique digest -> id holding the lock
-- KEYS[12] uniq_exp  ZSET
-- KEYS[13] cancels   SET
-- KEYS[14..27] the flow-control keys (QueueKeys.flow(), lib/flow.lua; tasks among them)
-- ARGV[1] "one" or "all"
-- ARGV[2] one: the task id; all: the state to take tasks from ("pending", "scheduled",
--         "retry", "archived", "completed")
-- ARGV[3] all: at most this many ids per call (bounds the script's run time)
--
-- An active task is never deleted: its worker holds it (cancel it instead).
-- one: returns the task's state before the call ("@<token>" for an active task, which
--      was left alone), or false when there is no such task.
-- all: returns {deleted, taken, deleted ids...}: ids taken off the source count in
--      "taken". An id whose state says otherwise is a stale entry: it is dropped from
--      the source, the task kept.
-- include: take
-- include: forget
-- include: unique
local states, scheduled, retry, archived = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local completed, retried, errors, failed_at = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local results, progress, uniq, uniq_exp = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local cancels = KEYS[13]
local F = flow_keys(14)
local tasks = F.tasks
local mode, target, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local sets = {
  scheduled = scheduled, retry = retry, archived = archived, completed = completed,
}

local function delete(id)
  release_unique(uniq, uniq_exp, digest_of(redis.call('HGET', tasks, id)), id)
  forget_tasks({id}, tasks, states, retried, errors, failed_at, results, progress, cancels)
end

return take(states, F, sets, mode, target, limit, delete)
