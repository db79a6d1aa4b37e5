#!lua flags=allow-oom
-- heartbeat: renew a worker's lease on one or more queues.
--
-- KEYS[1..] leases   ZSET  worker id -> lease expiry (ms), of each queue
-- ARGV[1] worker id
-- ARGV[2] now (ms)
-- ARGV[3] new expiry (ms)
--
-- Returns, per queue, 1 when the lease was live, 0 when it had expired or was gone (a
-- reaper may have taken this worker's tasks back: the worker must treat what it holds
-- there as lost). Either way the lease is live again afterwards. One call covers every
-- queue of a worker on one server (a cluster's queues are in different slots: one call
-- each there), so renewing costs one command whatever the number of queues.
local wid, now, expiry = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i, leases in ipairs(KEYS) do
  local old = tonumber(redis.call('ZSCORE', leases, wid) or '0')
  redis.call('ZADD', leases, expiry, wid)
  out[i] = old > now and 1 or 0
end
return out
