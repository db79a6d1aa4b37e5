-- pending: make a task pending again, if it still exists (a task deleted meanwhile
-- leaves only its stale id behind, dropped here). `push` is 'LPUSH' for the back of
-- the queue, where new tasks go, or 'RPUSH' for its head. Returns whether it did.
local function make_pending(states, pending, id, push)
  if redis.call('HEXISTS', states, id) == 0 then return false end
  redis.call('HSET', states, id, 'pending')
  redis.call(push, pending, id)
  return true
end
