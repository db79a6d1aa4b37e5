-- delete: delete tasks of one queue that are not active, with everything stored about
-- them (Inspector.delete_task and delete_all).
--
-- KEYS[1] states     HASH  id -> state
-- KEYS[2] pending    LIST
-- KEYS[3] scheduled  ZSET
-- KEYS[4] retry      ZSET
-- KEYS[5] archived   ZSET
-- KEYS[6] completed  ZSET
-- KEYS[7] tasks      HASH  id -> "<max_retry>|<unique digest>|<body>"
-- KEYS[8] retried    HASH
-- KEYS[9] errors     HASH
-- KEYS[10] failed_at HASH
-- KEYS[11] results   HASH
-- KEYS[12] progress  HASH
-- KEYS[13] uniq      HASH  unique digest -> id holding the lock
-- KEYS[14] uniq_exp  ZSET
-- KEYS[15] cancels   SET
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
local sets = {scheduled = KEYS[3], retry = KEYS[4], archived = KEYS[5], completed = KEYS[6]}

local function forget(id)
  local msg = redis.call('HGET', KEYS[7], id)
  local digest = msg and string.match(msg, '^%d+|([^|]*)|') or ''
  if digest ~= '' and redis.call('HGET', KEYS[13], digest) == id then
    redis.call('HDEL', KEYS[13], digest)
    redis.call('ZREM', KEYS[14], digest)
  end
  redis.call('HDEL', KEYS[1], id)
  for k = 7, 12 do redis.call('HDEL', KEYS[k], id) end
  redis.call('SREM', KEYS[15], id)
end

return take(KEYS[1], KEYS[2], sets, ARGV[1], ARGV[2], tonumber(ARGV[3]), forget)
