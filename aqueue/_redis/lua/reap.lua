-- reap: return the tasks of expired leases of one queue to the queue.
--
-- KEYS[1] leases     ZSET  worker id -> lease expiry (ms)
-- KEYS[2] pending    LIST
-- KEYS[3] tasks      HASH  id -> message ("<max_retry>|<unique digest>|<body>")
-- KEYS[4] states     HASH
-- KEYS[5] archived   ZSET
-- KEYS[6] retried    HASH
-- KEYS[7] errors     HASH
-- KEYS[8] failed_at  HASH
-- KEYS[9] stats      HASH
-- KEYS[10] uniq      HASH
-- KEYS[11] uniq_exp  ZSET
-- KEYS[12] cancels   SET   ids whose cancellation was asked
-- KEYS[13] progress  HASH  id -> encoded progress (cleared: that attempt is over)
-- KEYS[14..] the lease lists of the workers named in ARGV[3..], in the same order
-- ARGV[1] now (ms)
-- ARGV[2] today ("YYYY-MM-DD", UTC)
-- ARGV[3..] worker ids whose lease looked expired to the caller
--
-- Several reapers may race: each lease is re-checked here, atomically, so a task is
-- recovered once. An active task counts a failed attempt ("worker lost") and is
-- archived once its retries are spent; a task moved but never started goes back as it
-- was. Recovered tasks go to the head of the queue: they have waited longest.
-- Returns {recovered, archived, archived ids...}.
local now = tonumber(ARGV[1])
local recovered, archived = 0, 0
local archived_ids = {}
for w = 3, #ARGV do
  local wid = ARGV[w]
  local lease = KEYS[w + 11]
  local exp = redis.call('ZSCORE', KEYS[1], wid)
  if exp and tonumber(exp) <= now then
    while true do
      local id = redis.call('RPOP', lease)
      if not id then break end
      local state = redis.call('HGET', KEYS[4], id)
      local msg = redis.call('HGET', KEYS[3], id)
      if state and msg then
        if string.sub(state, 1, 1) == '@' then
          local max_retry, digest = string.match(msg, '^(%d+)|([^|]*)|')
          max_retry = tonumber(max_retry)
          local n = redis.call('HINCRBY', KEYS[6], id, 1)
          redis.call('HSET', KEYS[7], id, 'worker lost: the lease of worker ' .. wid ..
            ' expired while the task was active')
          redis.call('HSET', KEYS[8], id, now)
          redis.call('HINCRBY', KEYS[9], 'p', 1)
          redis.call('HINCRBY', KEYS[9], 'p:' .. ARGV[2], 1)
          redis.call('HINCRBY', KEYS[9], 'f', 1)
          redis.call('HINCRBY', KEYS[9], 'f:' .. ARGV[2], 1)
          redis.call('HDEL', KEYS[13], id)
          local cancelled = redis.call('SREM', KEYS[12], id) == 1
          if cancelled then redis.call('HSET', KEYS[7], id, 'cancelled') end
          if n > max_retry or cancelled then
            redis.call('HSET', KEYS[4], id, 'archived')
            redis.call('ZADD', KEYS[5], now, id)
            if digest ~= '' and redis.call('HGET', KEYS[10], digest) == id then
              redis.call('HDEL', KEYS[10], digest)
              redis.call('ZREM', KEYS[11], digest)
            end
            archived = archived + 1
            archived_ids[#archived_ids + 1] = id
          else
            redis.call('HSET', KEYS[4], id, 'pending')
            redis.call('RPUSH', KEYS[2], id)
            recovered = recovered + 1
          end
        elseif state == 'pending' then
          redis.call('RPUSH', KEYS[2], id)
          recovered = recovered + 1
        end
      end
    end
    redis.call('ZREM', KEYS[1], wid)
  end
end
local out = {recovered, archived}
for _, id in ipairs(archived_ids) do out[#out + 1] = id end
return out
