#!lua flags=allow-oom
-- requeue: give held tasks back to the head of their lanes without counting an attempt
-- (graceful shutdown), then, if asked, drop whatever else the lease list still holds
-- back to the queue too and deregister the worker's lease. Their slots are freed.
--
-- KEYS[1] lease      LIST  the worker's lease list for this queue
-- KEYS[2] states     HASH
-- KEYS[3] leases     ZSET  worker id -> lease expiry
-- KEYS[4..17] the flow-control keys (QueueKeys.flow(), lib/flow.lua)
-- ARGV[1] 1 to release the whole lease (the worker is leaving), else 0
-- ARGV[2] worker id
-- ARGV[3..] pairs: id, token
--
-- Returns how many tasks went back to the queue.
-- include: pending
local lease, states, leases = KEYS[1], KEYS[2], KEYS[3]
local F = flow_keys(4)
local leaving, wid = ARGV[1], ARGV[2]
local FIRST = 3 -- the first ARGV of the pairs
local back = {}
for i = FIRST, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', states, id) == '@' .. ARGV[i + 1] then
    redis.call('LREM', lease, 1, id)
    back[#back + 1] = id
  end
end
if leaving == '1' then
  -- Anything left was moved in by a claim whose reply never arrived: it was never
  -- started, so it goes back as it was.
  for _, id in ipairs(redis.call('LRANGE', lease, 0, -1)) do back[#back + 1] = id end
  redis.call('DEL', lease)
  redis.call('ZREM', leases, wid)
end
release(F, back)
local n = 0
-- The oldest last: each goes to the head of its lane.
for i = #back, 1, -1 do
  if make_pending(F, states, back[i], true) then n = n + 1 end
end
return n
