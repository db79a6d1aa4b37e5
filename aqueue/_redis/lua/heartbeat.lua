-- heartbeat: renew a worker's lease on one queue.
--
-- KEYS[1] leases     ZSET  worker id -> lease expiry (ms)
-- ARGV[1] worker id
-- ARGV[2] now (ms)
-- ARGV[3] new expiry (ms)
--
-- Returns 1 when the lease was live, 0 when it had expired or was gone (a reaper may
-- have taken this worker's tasks back: the worker must treat what it holds as lost).
-- Either way the lease is live again afterwards.
local leases = KEYS[1]
local wid, now, expiry = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local old = tonumber(redis.call('ZSCORE', leases, wid) or '0')
redis.call('ZADD', leases, expiry, wid)
if old > now then return 1 end
return 0
