-- workflow: a workflow's own bookkeeping, in its own hash slot (FlowKeys in keys.py):
-- which steps ended and how, their results, which steps were released, and its end.
-- Shared by flow_done.lua and cancel_flow.lua.

-- The flow's keys, from KEYS[1] on, in FlowKeys.all() order, then its end channel.
local function workflow_keys()
  local names = {'meta', 'tpl', 'shape', 'ended', 'results', 'errors', 'released', 'outbox'}
  local W = {}
  for i, name in ipairs(names) do W[name] = KEYS[i] end
  W.channel = KEYS[#names + 1]
  return W
end

-- The steps that wait for `idx` (their indexes, as strings).
local function children_of(W, idx)
  local out = {}
  for child in string.gmatch(redis.call('HGET', W.meta, 'c:' .. idx) or '', '[^,]+') do
    out[#out + 1] = child
  end
  return out
end

-- Archive, without running them, the steps that depend on `idx` directly or not.
local function archive_descendants(W, idx, why)
  local stack = {idx}
  while #stack > 0 do
    local s = table.remove(stack)
    for _, child in ipairs(children_of(W, s)) do
      if redis.call('HEXISTS', W.ended, child) == 0
        and redis.call('SISMEMBER', W.released, child) == 0 then
        redis.call('HSET', W.ended, child, 'archived')
        redis.call('HSET', W.errors, child, why)
        stack[#stack + 1] = child
      end
    end
  end
end

-- If every step is final, the flow ends: its state, its end time, its keys' expiry
-- (retention from now), and a notice for waiting clients. Returns its final state if it
-- ended now, else "".
local function maybe_end(W, now)
  if redis.call('HGET', W.meta, 'state') ~= 'open' then return '' end
  local total = tonumber(redis.call('HGET', W.meta, 'total'))
  if redis.call('HLEN', W.ended) < total then return '' end
  local state = 'completed'
  if redis.call('HEXISTS', W.meta, 'cancel') == 1 then
    state = 'cancelled'
  elseif redis.call('HEXISTS', W.meta, 'error') == 1 then
    state = 'failed'
  end
  redis.call('HSET', W.meta, 'state', state, 'completed', now)
  local ttl = tonumber(redis.call('HGET', W.meta, 'retention'))
  for _, key in ipairs({W.meta, W.tpl, W.shape, W.ended, W.results, W.errors, W.released,
                        W.outbox}) do
    redis.call('PEXPIRE', key, ttl)
  end
  redis.call('PUBLISH', W.channel, state)
  return state
end
