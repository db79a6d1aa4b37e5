#!lua flags=allow-oom
-- claim: move up to N pending tasks of one queue into a worker's lease list and mark
-- each active under a fresh fencing token, within the queue's limits.
--
-- KEYS[1] lease      LIST  this worker's lease list for this queue
-- KEYS[2] states     HASH  id -> state
-- KEYS[3] paused     STRING exists while the queue is paused
-- KEYS[4] leases     ZSET  worker id -> lease expiry (ms)
-- KEYS[5] retried    HASH  id -> retry count
-- KEYS[6..19] the flow-control keys (QueueKeys.flow(), lib/flow.lua)
-- ARGV[1] N (max tasks to claim)
-- ARGV[2] worker id
-- ARGV[3] first sequence number for tokens (token = worker id .. "." .. seq)
-- ARGV[4] now (ms, the worker's clock: leases are the workers' business)
--
-- The lanes with tasks to start are served in turn, highest priority first, each
-- taking its share of N (flow.lua). A lane whose limit is reached leaves the rotation
-- until a slot frees or its rate window moves on: its tasks stay pending, untouched,
-- and never hold back another lane. A task of the plain list whose type has limits
-- declared since it was enqueued moves to its lane here, still pending.
--
-- Returns -1 when the queue is paused, -2 when this worker holds no live lease (it must
-- re-register before claiming, so that a crash now would be noticed by a reaper), else
-- {wait ms (-1: no rate window to wait for), lanes held back, 1 if a limit is full now
-- (its next slot is freed by an ack) else 0, then id, token, message, retried for each
-- claimed task}.
-- include: flow
local lease, states, paused, leases, retried = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local F = flow_keys(6)
local n, wid, seq, now = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local lease_exp = tonumber(redis.call('ZSCORE', leases, wid) or '0')
if lease_exp <= now then return -2 end
if redis.call('EXISTS', paused) == 1 then return -1 end

-- A queue that uses no flow control (no limit declared, no lane, no lane waiting for a
-- window) has only its plain list: it is claimed at the cost it had before flow control.
local plain = redis.call('EXISTS', F.limits, F.rot, F.wait, F.ready) == 0
local clock = 0
if not plain then clock = server_ms() end
local held_back, wait_at, capped = 0, 0, 0
local function waits_until(at)
  if at > 0 and (wait_at == 0 or at < wait_at) then wait_at = at end
end

-- The queue's own limit bounds the whole claim.
local want = n
local qspec = spec_of(F, 'q')
if qspec and want > 0 then
  local free, at = room(F, 'q', qspec, clock)
  if free <= want then
    want = free
    capped = 1
  end
  if free <= 0 then
    held_back = 1
    waits_until(at)
    -- Counted on the server for the metrics (Inspector.limits): over all workers.
    redis.call('HINCRBY', F.lanes, '#hb:q', 1)
  end
end
local typed = not plain and redis.call('HLEN', F.limits) > (qspec and 1 or 0)

-- Lanes whose rate window moved on take their turn again.
if want > 0 and not plain then
  for _, lane in ipairs(redis.call('ZRANGEBYSCORE', F.wait, '-inf', clock, 'LIMIT', 0, 1000)) do
    redis.call('ZREM', F.wait, lane)
    if redis.call('HGET', F.lanes, lane) == 'w' then
      redis.call('HSET', F.lanes, lane, 'r')
      enter_rotation(F, lane)
    end
  end
end

local out = {0, 0, 0}
local claimed, active, seen = 0, {}, {}
local qhold = qspec and qspec[3] > 0

-- Room left this call for the limits of tasks that waited in a lane of no limited type
-- (see `admit`): limit -> count.
local late_room = {}

-- The limit of a task (of priority `prio`, type `ttype`, limit key `key`) enqueued into
-- a lane of no limited type, its type having limits declared since; and whether it may
-- start now: it may when its limit has room and no task of its own lane waits (that one
-- is older); otherwise it moves to that lane, still pending.
local function late_limit(prio, ttype, key)
  local spec = spec_of(F, 't:' .. ttype)
  if not spec then return nil, nil, true end
  local limit = 't\2' .. ttype .. '\2' .. key
  local free = late_room[limit]
  if free == nil then
    free = 0
    if redis.call('HEXISTS', F.lanes, prio .. string.sub(limit, 2)) == 0 then
      free = room(F, limit, spec, clock)
    end
  end
  late_room[limit] = math.max(free - 1, 0)
  if free <= 1 then capped = 1 end
  return limit, spec, free > 0
end

-- Start the pending tasks `ids` (oldest first) of one lane, under `limit` (nil: none,
-- or, in a lane of no limited type, each task's type's if it has one now). A stale id (deleted,
-- archived or cancelled while it waited) is dropped.
local function admit(ids, limit, spec)
  if #ids == 0 then return end
  local msgs = call_chunked('HMGET', F.tasks, ids)
  local current = call_chunked('HMGET', states, ids)
  local retries = call_chunked('HMGET', retried, ids)
  local started, holds, ok, moved, starts = 0, {}, {}, {}, {}
  for i, id in ipairs(ids) do
    local msg = msgs[i]
    if msg and current[i] == 'pending' and not seen[id] then
      local l, s = limit, spec
      if limit == nil and typed then
        local _, _, prio, ttype, key = read_header(msg)
        local go
        l, s, go = late_limit(prio, ttype, key)
        if not go then
          moved[#moved + 1] = {id, msg}
          msg = nil
        end
      end
      if msg then
        seen[id] = true
        local token = wid .. '.' .. seq
        seq = seq + 1
        started = started + 1
        ok[#ok + 1] = id
        active[#active + 1] = id
        active[#active + 1] = '@' .. token
        out[#out + 1] = id
        out[#out + 1] = token
        out[#out + 1] = msg
        out[#out + 1] = tonumber(retries[i] or '0')
        local h = {}
        if qhold then h[#h + 1] = 'q' end
        if l then
          if s[3] > 0 then h[#h + 1] = l end
          local n = starts[l]
          if n then n[2] = n[2] + 1 else starts[l] = {s, 1} end
        end
        if #h > 0 then
          holds[#holds + 1] = id
          holds[#holds + 1] = table.concat(h, '\1')
        end
      end
    end
  end
  -- Oldest first, each to the back of its lane: the tasks of a type moved by earlier
  -- claims are older still, and come first.
  for _, m in ipairs(moved) do push_ready(F, m[1], m[2], false) end
  if started == 0 then return end
  call_chunked('LPUSH', lease, ok)
  claimed = claimed + started
  if qspec then count_starts(F, 'q', qspec, started, clock) end
  for l, n in pairs(starts) do count_starts(F, l, n[1], n[2], clock) end
  if #holds > 0 then
    call_chunked('HSET', F.hold, holds)
    redis.call('HINCRBY', F.running, '#held', #holds / 2)
  end
end

-- The plain list's turn: the oldest `k` ids at its right end.
local fast_len = 0
if want > 0 then fast_len = redis.call('LLEN', F.pending) end
local fast_turn = 0
if not plain then fast_turn = tonumber(redis.call('HGET', F.lanes, '#fast') or '0') end
local function serve_fast(k, contested)
  local got = redis.call('LRANGE', F.pending, -k, -1)
  redis.call('LTRIM', F.pending, 0, -#got - 1)
  fast_len = fast_len - #got
  if contested then
    -- Its turn is only worth recording when other lanes wait for theirs.
    fast_turn = redis.call('HINCRBY', F.lanes, '#turn', 1)
    redis.call('HSET', F.lanes, '#fast', fast_turn)
  end
  local ids = {}
  for i = #got, 1, -1 do ids[#ids + 1] = got[i] end -- oldest first
  admit(ids)
end

-- A lane of `ready`: its share, within its limit; out of the rotation when it is empty
-- or its limit is reached.
local function serve_lane(lane, k)
  local ttype, key = string.match(lane, '^%d\2([^\2]*)\2(.*)$')
  local limit, spec = nil, nil
  if ttype ~= '' then
    spec = spec_of(F, 't:' .. ttype)
    if spec then
      limit = 't\2' .. ttype .. '\2' .. key
      local free, at = room(F, limit, spec, clock)
      if free <= 0 then
        held_back = held_back + 1
        redis.call('HINCRBY', F.lanes, '#hb:t:' .. ttype, 1)
        if at > 0 then
          redis.call('HSET', F.lanes, lane, 'w')
          redis.call('ZADD', F.wait, at, lane)
          waits_until(at)
        else
          redis.call('HSET', F.lanes, lane, 'c')
          redis.call('HINCRBY', F.lanes, '#parked', 1)
        end
        return
      end
      if free <= k then
        k = free
        capped = 1
      end
    end
  end
  local lo, hi = '[' .. lane .. '\1', '(' .. lane .. '\2'
  local members = redis.call('ZRANGEBYLEX', F.ready, lo, hi, 'LIMIT', 0, k)
  if #members > 0 then
    redis.call('ZREMRANGEBYLEX', F.ready, lo, '[' .. members[#members])
  end
  local ids = {}
  local at = #lane + 18
  for i, m in ipairs(members) do ids[i] = string.sub(m, at) end
  if #ids > 0 then call_chunked('HDEL', F.laneof, ids) end
  if #members == k and redis.call('ZLEXCOUNT', F.ready, lo, hi) > 0 then
    enter_rotation(F, lane)
  else
    redis.call('HDEL', F.lanes, lane)
  end
  admit(ids, limit, spec)
end

local FAST_SCORE = 9 * PRIO
local visits = 0
if plain and want > 0 and fast_len > 0 then
  serve_fast(want, false)
  visits = 2 * n + 32 -- nothing else to serve
end
while claimed < want and visits < 2 * n + 32 do
  visits = visits + 1
  local head = redis.call('ZRANGE', F.rot, 0, 0, 'WITHSCORES')
  local lane, score = head[1], tonumber(head[2] or '0')
  local fast = fast_len > 0 and (not lane or score >= FAST_SCORE + fast_turn)
  if not lane and not fast then break end
  local left = want - claimed
  -- The lanes of this priority share what is left: a lane with a backlog waits for
  -- every other lane of its priority at most one turn.
  local band = fast and FAST_SCORE or score - score % PRIO
  local others = redis.call('ZCOUNT', F.rot, band, band + PRIO - 1)
  if band == FAST_SCORE and fast_len > 0 then others = others + 1 end
  local k = math.ceil(left / math.max(others, 1))
  if fast then
    serve_fast(k, lane ~= nil)
  else
    redis.call('ZREM', F.rot, lane)
    serve_lane(lane, k)
  end
end

if #active > 0 then call_chunked('HSET', states, active) end
-- Work is left that this worker has no slot for: wake another.
if claimed == n and n > 0 and (fast_len > 0 or (not plain and redis.call('ZCARD', F.rot) > 0)) then
  ring(F)
end
if plain then
  out[1] = -1 -- no rate window to wait for
  return out
end
local first = redis.call('ZRANGE', F.wait, 0, 0, 'WITHSCORES')
if first[2] then waits_until(tonumber(first[2])) end
out[1] = wait_at > 0 and math.max(wait_at - clock, 1) or -1
out[2] = held_back
-- Lanes parked for a slot, by this call or earlier ones: the acks free their slots.
if capped == 0 and tonumber(redis.call('HGET', F.lanes, '#parked') or '0') > 0 then capped = 1 end
out[3] = capped
return out
