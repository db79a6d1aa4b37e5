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
local lease, pending, states, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local leaving, wid = ARGV[1], ARGV[2]
local FIRST = 3 -- the first ARGV of the pairs
local n = 0
for i = FIRST, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', states, id) == '@' .. ARGV[i + 1] then
    redis.call('LREM', lease, 1, id)
    redis.call('HSET', states, id, 'pending')
    redis.call('RPUSH', pending, id)
    n = n + 1
  end
end
if leaving == '1' then
  -- Anything left was moved in by a claim whose reply never arrived: it was never
  -- started, so it goes back as it was.
  while true do
    local id = redis.call('RPOPLPUSH', lease, pending)
    if not id then break end
    if redis.call('HEXISTS', states, id) == 1 then
      redis.call('HSET', states, id, 'pending')
      n = n + 1
    end
  end
  redis.call('ZREM', leases, wid)
end
return n
