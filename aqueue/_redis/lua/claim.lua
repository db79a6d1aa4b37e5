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
local wid, seq, now = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local moved = ARGV[5]
-- The reply of a blocking move can reach the worker late (it froze, or its loop was
-- blocked): by then a reaper may have returned the id to the queue and another worker
-- may have run it. Only an id still in this lease list is still this worker's.
if moved ~= '' and not redis.call('LPOS', KEYS[2], moved) then moved = '' end
local lease_exp = tonumber(redis.call('ZSCORE', KEYS[6], wid) or '0')
if lease_exp <= now or redis.call('EXISTS', KEYS[5]) == 1 then
  if moved ~= '' then
    -- A blocking move raced with a pause or a lost lease: give the task back to the
    -- head of its queue, untouched, so nothing is held without a live lease.
    redis.call('LREM', KEYS[2], 1, moved)
    redis.call('RPUSH', KEYS[1], moved)
  end
  if lease_exp <= now then return -2 end
  return -1
end
-- include: chunked
local ids = {}
if moved ~= '' then ids[1] = moved end
local n = tonumber(ARGV[1])
if n > 0 then
  -- The n oldest pending ids sit at the right end of the list (enqueue pushes left).
  local got = redis.call('LRANGE', KEYS[1], -n, -1)
  if #got > 0 then
    redis.call('LTRIM', KEYS[1], 0, -#got - 1)
    call_chunked('LPUSH', KEYS[2], got)
    for i = #got, 1, -1 do ids[#ids + 1] = got[i] end -- oldest first
  end
end
if #ids == 0 then return {} end
local msgs = call_chunked('HMGET', KEYS[3], ids)
local states = call_chunked('HMGET', KEYS[4], ids)
local retried = call_chunked('HMGET', KEYS[7], ids)
local out, active, seen = {}, {}, {}
for i, id in ipairs(ids) do
  if not msgs[i] or states[i] ~= 'pending' or seen[id] then
    -- Deleted, archived or cancelled while it waited (a cancel can race a blocking
    -- move), or a stale duplicate of a task that runs elsewhere or earlier in this
    -- batch: drop this copy of the id, run nothing.
    redis.call('LREM', KEYS[2], 1, id)
  else
    seen[id] = true
    local token = wid .. '.' .. seq
    seq = seq + 1
    active[#active + 1] = id
    active[#active + 1] = '@' .. token
    out[#out + 1] = id
    out[#out + 1] = token
    out[#out + 1] = msgs[i]
    out[#out + 1] = tonumber(retried[i] or '0')
  end
end
if #active > 0 then call_chunked('HSET', KEYS[4], active) end
return out
