-- requeue: give held tasks back to the head of their queue without counting an attempt
-- (graceful shutdown), then, if asked, drop whatever else the lease list still holds
-- back to the queue too and deregister the worker's lease.
--
-- KEYS[1] lease      LIST  the worker's lease list for this queue
-- KEYS[2] pending    LIST
-- KEYS[3] states     HASH
-- KEYS[4] leases     ZSET  worker id -> lease expiry
-- ARGV[1] 1 to release the whole lease (the worker is leaving), else 0
-- ARGV[2] worker id
-- ARGV[3..] pairs: id, token
--
-- Returns how many tasks went back to the queue.
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[3], id) == '@' .. ARGV[i + 1] then
    redis.call('LREM', KEYS[1], 1, id)
    redis.call('HSET', KEYS[3], id, 'pending')
    redis.call('RPUSH', KEYS[2], id)
    n = n + 1
  end
end
if ARGV[1] == '1' then
  -- Anything left was moved in by a claim whose reply never arrived: it was never
  -- started, so it goes back as it was.
  while true do
    local id = redis.call('RPOPLPUSH', KEYS[1], KEYS[2])
    if not id then break end
    if redis.call('HEXISTS', KEYS[3], id) == 1 then
      redis.call('HSET', KEYS[3], id, 'pending')
      n = n + 1
    end
  end
  redis.call('ZREM', KEYS[4], ARGV[2])
end
return n
