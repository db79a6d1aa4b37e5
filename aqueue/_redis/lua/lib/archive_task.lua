-- include: unique
-- archive_task: put a task, already off its source list or set, in the archive. The
-- archive is a final state, so the task's unique lock (digest, "" = none) is released.
local function archive_task(states, archived, uniq, uniq_exp, id, now, digest)
  redis.call('HSET', states, id, 'archived')
  redis.call('ZADD', archived, now, id)
  release_unique(uniq, uniq_exp, digest, id)
end
