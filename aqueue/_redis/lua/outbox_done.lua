#!lua flags=allow-oom
-- outbox_done: take handled entries off an outbox (a queue's, or a workflow's), each
-- once, searching from the tail, where the oldest entries are.
--
-- KEYS[1] outbox     LIST
-- ARGV[1..] the entries
--
-- Returns how many were removed. One call for many entries: an LREM command each would
-- cost the caller several arguments per entry to send.
local n = 0
for _, entry in ipairs(ARGV) do
  n = n + redis.call('LREM', KEYS[1], -1, entry)
end
return n
