#!lua flags=allow-oom
-- drop_queue: remove every key of one queue (Inspector.delete_queue).
--
-- KEYS[1] states     HASH  id -> state: one field per task, whatever its state
-- KEYS[2] pending    LIST
-- KEYS[3..] every other key of the queue, lease lists included
-- ARGV[1] "1" to drop the queue even if it holds tasks, else "0"
--
-- The check and the removal are one step, so a task enqueued meanwhile is either seen
-- (and the queue refused) or not written yet. UNLINK frees big hashes off the main
-- thread. A worker still serving the queue sees its lease gone (it cancels the handlers
-- it runs for it), and the late writes of those handlers are refused by their tokens.
-- Returns -n (n >= 1 tasks, nothing removed) when the queue is not empty and force is
-- off, else the number of keys removed.
local states, pending = KEYS[1], KEYS[2]
local force = ARGV[1]
if force ~= '1' then
  local n = redis.call('HLEN', states)
  if n == 0 then n = redis.call('LLEN', pending) end
  if n > 0 then return -n end
end
local removed = 0
for _, key in ipairs(KEYS) do
  removed = removed + redis.call('UNLINK', key)
end
return removed
