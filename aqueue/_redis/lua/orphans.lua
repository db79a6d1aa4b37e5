-- orphans: give back ids in a live worker's lease list that the worker does not hold.
--
-- They get there when a reply is lost: a claim or blocking move ran on the server but
-- the connection dropped before the worker read the answer, or an ack could not be
-- written before the lease would have lapsed. The reaper never touches a live lease,
-- so the worker itself returns them. The worker runs this only while no claim of its
-- own on this queue is in flight, so every id it has not listed is truly unknown to it.
--
-- KEYS[1] lease      LIST  the worker's lease list for this queue
-- KEYS[2] pending    LIST
-- KEYS[3] states     HASH
-- ARGV[1..] ids the worker holds (keep them)
--
-- Returns how many ids went back to the head of the queue. No attempt is counted: the
-- worker cannot tell whether a handler ever ran, and at-least-once allows a re-run.
-- include: pending
local lease, pending, states = KEYS[1], KEYS[2], KEYS[3]
local keep = {}
for _, id in ipairs(ARGV) do keep[id] = true end
local n = 0
for _, id in ipairs(redis.call('LRANGE', lease, 0, -1)) do
  if not keep[id] then
    redis.call('LREM', lease, 0, id)
    if make_pending(states, pending, id, 'RPUSH') then n = n + 1 end
  end
end
return n
