-- claim: move up to N pending tasks of one queue into a worker's lease list and mark
-- each active under a fresh fencing token.
--
-- KEYS[1] pending    LIST
-- KEYS[2] lease      LIST  this worker's lease list for this queue
-- KEYS[3] tasks      HASH  id -> message
-- KEYS[4] states     HASH  id -> state
-- KEYS[5] paused     STRING exists while the queue is paused
-- KEYS[6] leases     ZSET  worker id -> lease expiry (ms)
-- KEYS[7] retried    HASH  id -> retry count
-- ARGV[1] N (max tasks to claim)
-- ARGV[2] worker id
-- ARGV[3] first sequence number for tokens (token = worker id .. "." .. seq)
-- ARGV[4] now (ms)
-- ARGV[5] id already moved by BLMOVE into the lease list ("" = none)
--
-- Returns -1 when the queue is paused, -2 when this worker holds no live lease (it must
-- re-register before claiming, so that a crash now would be noticed by a reaper),
-- else a flat array: id, token, message, retried, ... for each claimed task.
-- include: chunked
local pending, lease, tasks, states = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local paused, leases, retried = KEYS[5], KEYS[6], KEYS[7]
local n, wid, seq, now = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local moved = ARGV[5]
-- The reply of a blocking move can reach the worker late (it froze, or its loop was
-- blocked): by then a reaper may have returned the id to the queue and another worker
-- may have run it. Only an id still in this lease list is still this worker's.
if moved ~= '' and not redis.call('LPOS', lease, moved) then moved = '' end
local lease_exp = tonumber(redis.call('ZSCORE', leases, wid) or '0')
if lease_exp <= now or redis.call('EXISTS', paused) == 1 then
  if moved ~= '' then
    -- A blocking move raced with a pause or a lost lease: give the task back to the
    -- head of its queue, untouched, so nothing is held without a live lease.
    redis.call('LREM', lease, 1, moved)
    redis.call('RPUSH', pending, moved)
  end
  if lease_exp <= now then return -2 end
  return -1
end
local ids = {}
if moved ~= '' then ids[1] = moved end
if n > 0 then
  -- The n oldest pending ids sit at the right end of the list (enqueue pushes left).
  local got = redis.call('LRANGE', pending, -n, -1)
  if #got > 0 then
    redis.call('LTRIM', pending, 0, -#got - 1)
    call_chunked('LPUSH', lease, got)
    for i = #got, 1, -1 do ids[#ids + 1] = got[i] end -- oldest first
  end
end
if #ids == 0 then return {} end
local msgs = call_chunked('HMGET', tasks, ids)
local current = call_chunked('HMGET', states, ids)
local retries = call_chunked('HMGET', retried, ids)
local out, active, seen = {}, {}, {}
for i, id in ipairs(ids) do
  if not msgs[i] or current[i] ~= 'pending' or seen[id] then
    -- Deleted, archived or cancelled while it waited (a cancel can race a blocking
    -- move), or a stale duplicate of a task that runs elsewhere or earlier in this
    -- batch: drop this copy of the id, run nothing.
    redis.call('LREM', lease, 1, id)
  else
    seen[id] = true
    local token = wid .. '.' .. seq
    seq = seq + 1
    active[#active + 1] = id
    active[#active + 1] = '@' .. token
    out[#out + 1] = id
    out[#out + 1] = token
    out[#out + 1] = msgs[i]
    out[#out + 1] = tonumber(retries[i] or '0')
  end
end
if #active > 0 then call_chunked('HSET', states, active) end
return out
