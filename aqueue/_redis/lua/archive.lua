#!lua flags=allow-oom
-- archive: move pending, scheduled or retry tasks of one queue to archived, without
-- running them and without recording an error (Inspector.archive_task and archive_all).
--
-- KEYS[1] states     HASH  id -> state
-- KEYS[2] scheduled  ZSET
-- KEYS[3] retry      ZSET
-- KEYS[4] archived   ZSET  id -> archive time (ms)
-- KEYS[5] uniq       HASH  unique digest -> id holding the lock
-- KEYS[6] uniq_exp   ZSET  unique digest -> lock expiry (ms)
-- KEYS[7..20] the flow-control keys (QueueKeys.flow(), lib/flow.lua; tasks among them)
-- ARGV[1] "one" or "all"
-- ARGV[2] one: the task id; all: the state to take tasks from ("pending", "scheduled",
--         "retry")
-- ARGV[3] now (ms)
-- ARGV[4] all: at most this many ids per call (bounds the script's run time)
--
-- Archived is a final state, so a unique lock the task holds is released.
-- one: returns the task's state before the call (it moved only if that was pending,
--      scheduled or retry), or false when there is no such task.
-- all: returns {moved, taken, moved ids...}: ids taken off the source count in "taken";
--      pending tasks are taken from the head of the queue. An id whose state says
--      otherwise is a stale entry: it is dropped, not moved.
-- include: take
-- include: archive_task
local states, scheduled, retry, archived = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local uniq, uniq_exp = KEYS[5], KEYS[6]
local F = flow_keys(7)
local tasks = F.tasks
local mode, target, now, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local sets = {scheduled = scheduled, retry = retry}

local function archive(id)
  local _, digest, _, _, _, step = read_header(redis.call('HGET', tasks, id))
  archive_task(states, archived, uniq, uniq_exp, id, now, digest)
  report_step(F, step, 'archived|archived by an operator')
end

return take(states, F, sets, mode, target, limit, archive)
