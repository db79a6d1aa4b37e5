#!lua flags=allow-oom
-- flow_done: record the ends of steps of one workflow, each once, and release the steps
-- that waited for them (flow keys only: a step's own queue is another slot; its ack put
-- the end in the queue's outbox, and whoever drains that calls this).
--
-- KEYS[1..8] the flow's keys (FlowKeys.all()), KEYS[9] its end channel
-- ARGV[1] now (ms)
-- ARGV[2..] per end, three values: the step's index; how it ended ("completed",
--          "archived" or "revoked"); its encoded result (completed) or its last error
--
-- A step's end is recorded once (a retried or duplicated report changes nothing). A
-- completed step counts down the dependencies of each step waiting for it; a step whose
-- count reaches zero is released, once (the `released` set), and pushed on the flow's
-- outbox, to be written to its queue. A step that failed fails the flow: every step that
-- depends on it is archived without running, its error naming the failed step;
-- independent branches run on.
-- Returns {ends recorded now, its final state if the flow ended now ("" else), steps
-- released, then for each step
-- released {index, template, inputs' shape ("" = none), then its dependencies' index,
-- result ("" = none) pairs}}; or -1 when the flow is unknown (its retention passed).
-- include: chunked
-- include: workflow
local W = workflow_keys()
local now = tonumber(ARGV[1])
if redis.call('EXISTS', W.meta) == 0 then return -1 end
local stopped = redis.call('HEXISTS', W.meta, 'cancel') == 1
local out = {0, 0, 0}
local released = {}

local function completed(idx, value)
  if value ~= '' then redis.call('HSET', W.results, idx, value) end
  -- Independent branches run on in a failed flow; a cancelled one releases nothing.
  if stopped then return end
  for _, child in ipairs(children_of(W, idx)) do
    -- Its count of dependencies not completed yet: each end is recorded once, so each
    -- completion counts once; the `released` set makes the release once too.
    if redis.call('HINCRBY', W.meta, 'w:' .. child, -1) <= 0
      and redis.call('SADD', W.released, child) == 1 then
      redis.call('RPUSH', W.outbox, child)
      released[#released + 1] = child
    end
  end
end

local function failed(idx, kind, value)
  redis.call('HSET', W.errors, idx, value)
  local step = (redis.call('HGET', W.meta, 'id') or '?') .. '-' .. idx
  local why = 'step ' .. step .. ' ended ' .. kind .. ': ' .. value
  if not stopped and redis.call('HEXISTS', W.meta, 'error') == 0 then
    redis.call('HSET', W.meta, 'error', why, 'failed', idx)
  end
  archive_descendants(W, idx, 'not run: ' .. why)
end

for i = 2, #ARGV, 3 do
  local idx, kind, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HSETNX', W.ended, idx, kind) == 1 then
    out[1] = out[1] + 1
    if kind == 'completed' then completed(idx, value) else failed(idx, kind, value) end
  end
end

-- What the caller needs to write each released step at once: its template, its inputs'
-- shape and its dependencies' results.
for _, child in ipairs(released) do
  local deps = {}
  for dep in string.gmatch(redis.call('HGET', W.meta, 'd:' .. child), '[^,]+') do
    deps[#deps + 1] = dep
  end
  local values = call_chunked('HMGET', W.results, deps)
  local item = {child, redis.call('HGET', W.tpl, child), redis.call('HGET', W.shape, child) or ''}
  for j, dep in ipairs(deps) do
    item[#item + 1] = dep
    item[#item + 1] = values[j] or ''
  end
  out[#out + 1] = item
end
out[2] = maybe_end(W, now)
out[3] = #released
return out
