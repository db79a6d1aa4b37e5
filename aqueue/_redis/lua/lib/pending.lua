-- include: flow
-- pending: make a task pending again, if it still exists (a task deleted meanwhile
-- leaves only its stale id behind, dropped here), in its lane (lib/flow.lua): at the
-- back, where new tasks go, or at the `head` (it has waited longest). Returns whether
-- it did.
local function make_pending(F, states, id, head)
  local msg = redis.call('HGET', F.tasks, id)
  if not msg or redis.call('HEXISTS', states, id) == 0 then return false end
  redis.call('HSET', states, id, 'pending')
  push_ready(F, id, msg, head)
  return true
end
