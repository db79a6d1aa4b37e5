#!lua flags=allow-oom
-- cancel_flow: cancel a workflow (Inspector.cancel_flow). Steps not released yet are
-- archived as cancelled here; steps in their queues are returned, for the caller to
-- cancel one by one (their ends then come back through flow_done).
--
-- KEYS[1..8] the flow's keys (FlowKeys.all()), KEYS[9] its end channel
-- ARGV[1] now (ms)
--
-- Returns -1 for an unknown flow, 0 for a flow that already ended, else {1 if it ended
-- now, then the indexes of the released steps that have not ended}.
-- include: workflow
local W = workflow_keys()
local now = tonumber(ARGV[1])
if redis.call('EXISTS', W.meta) == 0 then return -1 end
if redis.call('HGET', W.meta, 'state') ~= 'open' then return 0 end
redis.call('HSET', W.meta, 'cancel', 1)
-- Released but not written to their queue yet: they never run.
for _, idx in ipairs(redis.call('LRANGE', W.outbox, 0, -1)) do
  if redis.call('HEXISTS', W.ended, idx) == 0 then
    redis.call('HSET', W.ended, idx, 'archived')
    redis.call('HSET', W.errors, idx, 'cancelled')
  end
end
redis.call('DEL', W.outbox)
local running = {}
local total = tonumber(redis.call('HGET', W.meta, 'total'))
for i = 0, total - 1 do
  local idx = tostring(i)
  if redis.call('HEXISTS', W.ended, idx) == 0 then
    if redis.call('SISMEMBER', W.released, idx) == 1
      or redis.call('HEXISTS', W.meta, 'd:' .. idx) == 0 then
      running[#running + 1] = idx
    else
      redis.call('HSET', W.ended, idx, 'archived')
      redis.call('HSET', W.errors, idx, 'cancelled')
    end
  end
end
local ended = maybe_end(W, now) ~= '' and 1 or 0
table.insert(running, 1, ended)
return running
