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
local old = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
redis.call('ZADD', KEYS[1], tonumber(ARGV[3]), ARGV[1])
if old > tonumber(ARGV[2]) then return 1 end
return 0
