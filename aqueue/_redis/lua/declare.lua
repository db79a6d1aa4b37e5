#!lua flags=allow-oom
-- declare: replace the limits declared for one queue (a worker starting: the latest
-- started worker's declaration binds every worker's claims).
--
-- KEYS[1..14] the flow-control keys (QueueKeys.flow(), lib/flow.lua)
-- ARGV pairs: field ("q" for the queue, "t:<type>" for a task type), limit
--      ("<rate limit> <rate per ms> <concurrency>", 0 = none)
--
-- Lanes that waited for a limit take their turn again: the new limits may let them go
-- on at once, and a lane still held back is parked again by the next claim. Returns how
-- many lanes went back into turn.
-- include: flow
local F = flow_keys(1)
redis.call('DEL', F.limits)
if #ARGV > 0 then redis.call('HSET', F.limits, unpack(ARGV)) end
local lanes = redis.call('HGETALL', F.lanes)
local n = 0
for i = 1, #lanes, 2 do
  local lane, status = lanes[i], lanes[i + 1]
  if status == 'c' or status == 'w' then
    redis.call('HSET', F.lanes, lane, 'r')
    enter_rotation(F, lane)
    n = n + 1
  end
end
redis.call('DEL', F.wait)
redis.call('HDEL', F.lanes, '#parked')
if n > 0 then ring(F) end
return n
