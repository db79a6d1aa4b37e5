#!lua flags=allow-oom
-- orphans: give back ids in a live worker's lease list that the worker does not hold.
--
-- They get there when a reply is lost: a claim ran on the server but the connection
-- dropped before the worker read the answer, or an ack could not be written before the
-- lease would have lapsed. The reaper never touches a live lease, so the worker itself
-- returns them. The worker runs this only while no claim of its own on this queue is
-- in flight, so every id it has not listed is truly unknown to it.
--
-- KEYS[1] lease      LIST  the worker's lease list for this queue
-- KEYS[2] states     HASH
-- KEYS[3..16] the flow-control keys (QueueKeys.flow(), lib/flow.lua)
-- ARGV[1..] ids the worker holds (keep them)
--
-- Returns how many ids went back to the head of their lanes. No attempt is counted:
-- the worker cannot tell whether a handler ever ran, and at-least-once allows a re-run.
-- The slots they held are freed.
-- include: pending
local lease, states = KEYS[1], KEYS[2]
local F = flow_keys(3)
local keep = {}
for _, id in ipairs(ARGV) do keep[id] = true end
local n = 0
local gone = {}
for _, id in ipairs(redis.call('LRANGE', lease, 0, -1)) do
  if not keep[id] then
    redis.call('LREM', lease, 0, id)
    gone[#gone + 1] = id
  end
end
release(F, gone)
for _, id in ipairs(gone) do
  if make_pending(F, states, id, true) then n = n + 1 end
end
return n
