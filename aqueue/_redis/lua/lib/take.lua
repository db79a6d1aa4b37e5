-- include: flow
-- take: the "one"/"all" driver shared by archive.lua and delete.lua. It takes a task off
-- its lane (a pending task) or the set its state names, then hands its id to `apply`.
--
-- states, F: the queue's states hash and flow-control keys; sets: state -> ZSET key of
-- the states a task may be taken from besides "pending".
-- mode "one": `arg` is the task id. Returns the task's state before the call (taken
--   only if that was pending or one of `sets`), or false when there is no such task.
-- mode "all": `arg` is the state to take from, at most `limit` ids. Returns {applied,
--   taken, applied ids...}; pending tasks are taken from the head of the plain list,
--   then from the other lanes in lane order. An id
--   whose state says otherwise is a stale entry: it is dropped from the source only.
local function take(states, F, sets, mode, arg, limit, apply)
  if mode == 'one' then
    local state = redis.call('HGET', states, arg)
    if not state then return false end
    if state == 'pending' then
      -- O(length of the queue) for the plain list, like cancel.lua: fine for one task.
      unready(F, arg)
    elseif sets[state] then
      redis.call('ZREM', sets[state], arg)
    else
      return state
    end
    apply(arg)
    return state
  end
  local ids = {}
  if arg == 'pending' then
    ids = redis.call('RPOP', F.pending, limit) or {}
    for _, id in ipairs(take_lanes(F, limit - #ids)) do ids[#ids + 1] = id end
  else
    local popped = redis.call('ZPOPMIN', sets[arg], limit)
    for i = 1, #popped, 2 do ids[#ids + 1] = popped[i] end
  end
  local out = {0, #ids}
  for _, id in ipairs(ids) do
    if redis.call('HGET', states, id) == arg then
      apply(id)
      out[1] = out[1] + 1
      out[#out + 1] = id
    end
  end
  return out
end
