#!lua flags=allow-oom
-- reap: return the tasks of expired leases of one queue to the queue.
--
-- KEYS[1] leases     ZSET  worker id -> lease expiry (ms)
-- KEYS[2] states     HASH
-- KEYS[3] archived   ZSET
-- KEYS[4] retried    HASH
-- KEYS[5] errors     HASH
-- KEYS[6] failed_at  HASH
-- KEYS[7] stats      HASH
-- KEYS[8] uniq       HASH
-- KEYS[9] uniq_exp   ZSET
-- KEYS[10] cancels   SET   ids whose cancellation was asked
-- KEYS[11] progress  HASH  id -> encoded progress (cleared: that attempt is over)
-- KEYS[12..25] the flow-control keys (QueueKeys.flow(), lib/flow.lua; tasks among them)
-- KEYS[26..] the lease lists of the workers named in ARGV[3..], in the same order
-- ARGV[1] now (ms)
-- ARGV[2] today ("YYYY-MM-DD", UTC)
-- ARGV[3..] worker ids whose lease looked expired to the caller
--
-- Several reapers may race: each lease is re-checked here, atomically, so a task is
-- recovered once. An active task counts a failed attempt ("worker lost") and is
-- archived once its retries are spent; a task moved but never started goes back as it
-- was. Recovered tasks go to the head of their lanes: they have waited longest. The
-- slots they held are freed, once: their hold is gone with them. The queue's bell rings
-- once a lease was reaped.
-- Returns {recovered, archived, archived ids...}.
-- include: flow
-- include: archive_task
-- include: stats
local leases, states, archived, retried = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local errors, failed_at, stats, uniq = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local uniq_exp, cancels, progress = KEYS[9], KEYS[10], KEYS[11]
local F = flow_keys(12)
local tasks = F.tasks
local now, day = tonumber(ARGV[1]), ARGV[2]
-- The lease list KEYS[FIRST_LEASE + i] belongs to the worker ARGV[FIRST_WORKER + i].
local FIRST_LEASE, FIRST_WORKER = 26, 3
local recovered, n_archived = 0, 0
local archived_ids = {}
local reaped = false
for w = FIRST_WORKER, #ARGV do
  local wid = ARGV[w]
  local lease = KEYS[FIRST_LEASE + w - FIRST_WORKER]
  local exp = redis.call('ZSCORE', leases, wid)
  if exp and tonumber(exp) <= now then
    while true do
      local id = redis.call('RPOP', lease)
      if not id then break end
      release(F, {id})
      local state = redis.call('HGET', states, id)
      local msg = redis.call('HGET', tasks, id)
      if state and msg then
        if string.sub(state, 1, 1) == '@' then
          local max_retry, digest, _, _, _, step = read_header(msg)
          local n = redis.call('HINCRBY', retried, id, 1)
          redis.call('HSET', errors, id, 'worker lost: the lease of worker ' .. wid ..
            ' expired while the task was active')
          redis.call('HSET', failed_at, id, now)
          count_failed(stats, day)
          redis.call('HDEL', progress, id)
          local cancelled = redis.call('SREM', cancels, id) == 1
          if cancelled then redis.call('HSET', errors, id, 'cancelled') end
          if n > max_retry or cancelled then
            archive_task(states, archived, uniq, uniq_exp, id, now, digest)
            report_step(F, step, 'archived|' .. redis.call('HGET', errors, id))
            n_archived = n_archived + 1
            archived_ids[#archived_ids + 1] = id
          else
            redis.call('HSET', states, id, 'pending')
            push_ready(F, id, msg, true)
            recovered = recovered + 1
          end
        elseif state == 'pending' then
          push_ready(F, id, msg, true)
          recovered = recovered + 1
        end
      end
    end
    redis.call('ZREM', leases, wid)
    reaped = true
  end
end
-- A worker that died may have popped the queue's bell and never claimed what it
-- announced: wake another to look.
if reaped then ring(F) end
local out = {recovered, n_archived}
for _, id in ipairs(archived_ids) do out[#out + 1] = id end
return out
