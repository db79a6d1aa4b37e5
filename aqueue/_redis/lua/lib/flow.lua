-- include: header
-- include: chunked
-- flow: where pending tasks wait, and the limits that let them start (flow control,
-- docs/flow-control.md). Every script that makes a task pending, takes a pending task
-- away, or ends an attempt goes through here, so the bookkeeping has one home.
--
-- A lane is "<priority>\2<limited type or ''>\2<limit key>". The lane "0\2\2" (priority
-- 0, no key, a type without limits) is the plain `pending` LIST, unchanged by flow
-- control; every other lane's tasks are members "<lane>\1<16-digit seq><id>" of the
-- `ready` ZSET (one score, so they sort by lane, then by seq: FIFO per lane), and the
-- lanes with tasks to start are in `rot`, scored by priority, then by turn.
-- A limit is "q" (the queue's own) or "t\2<type>\2<key>" (a task type's, per key).
-- Type names and keys never hold bytes below 32 (checked by the client), so \1 and \2
-- are safe separators.

local FAST = '0\2\2'
local PRIO = 1099511627776 -- 2^40: a priority's band of turn scores in `rot`

-- The flow-control keys, from KEYS[first] on, in QueueKeys.flow() order.
local function flow_keys(first)
  local names = {'pending', 'tasks', 'ready', 'laneof', 'lanes', 'rot', 'wait', 'running',
                 'hold', 'rlog', 'rlim', 'limits', 'bell', 'outbox'}
  local F = {specs = {}}
  for i, name in ipairs(names) do F[name] = KEYS[first + i - 1] end
  return F
end

-- The server's clock in ms: rate windows never depend on a worker's clock.
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function pad(n, width)
  return string.format('%0' .. width .. 'd', n)
end

-- A declared limit ("q" or "t:<type>"): {rate limit, rate per (ms), concurrency}, 0 for
-- none; false when nothing is declared. Read once per script call.
local function spec_of(F, field)
  local s = F.specs[field]
  if s == nil then
    s = false
    local text = redis.call('HGET', F.limits, field)
    if text then
      local n, per, c = string.match(text, '^(%d+) (%d+) (%d+)$')
      if n then s = {tonumber(n), tonumber(per), tonumber(c)} end
    end
    F.specs[field] = s
  end
  return s
end

-- Wake one idle worker of the queue: its blocking claim pops the token. One token at
-- most: a worker that wakes claims what it can and rings again if work is left.
local function ring(F)
  if redis.call('LLEN', F.bell) == 0 then redis.call('LPUSH', F.bell, '1') end
end

local function enter_rotation(F, lane)
  local p = tonumber(string.sub(lane, 1, 1))
  local turn = redis.call('HINCRBY', F.lanes, '#turn', 1)
  redis.call('ZADD', F.rot, (9 - p) * PRIO + turn, lane)
end

-- A lane just got a task: into the rotation unless it is there already or waits for a
-- limit. Returns the lane's status.
local function activate(F, lane)
  if redis.call('HSETNX', F.lanes, lane, 'r') == 1 then
    enter_rotation(F, lane)
    return 'r'
  end
  return redis.call('HGET', F.lanes, lane)
end

local function lane_of(F, prio, ttype, key)
  local t = ''
  if spec_of(F, 't:' .. ttype) then t = ttype end
  return prio .. '\2' .. t .. '\2' .. key
end

-- Make a pending task wait in its lane: at the back, or at the `head` (a task that was
-- taken and is given back has waited longest).
local function push_ready(F, id, msg, head)
  local _, _, prio, ttype, key = read_header(msg)
  local lane = lane_of(F, prio, ttype, key)
  if lane == FAST then
    redis.call(head and 'RPUSH' or 'LPUSH', F.pending, id)
    ring(F)
    return
  end
  local seq
  if head then
    seq = 4000000000000000 - redis.call('HINCRBY', F.lanes, '#head', 1)
  else
    seq = 4000000000000000 + redis.call('HINCRBY', F.lanes, '#seq', 1)
  end
  local member = lane .. '\1' .. pad(seq, 16) .. id
  redis.call('ZADD', F.ready, 0, member)
  redis.call('HSET', F.laneof, id, member)
  if activate(F, lane) == 'r' then ring(F) end
end

-- A pending task leaves without running (cancelled, archived, deleted).
local function unready(F, id)
  local member = redis.call('HGET', F.laneof, id)
  if member then
    redis.call('ZREM', F.ready, member)
    redis.call('HDEL', F.laneof, id)
  else
    redis.call('LREM', F.pending, 0, id)
  end
end

-- The id in a member of `ready`.
local function member_id(member)
  local at = string.find(member, '\1', 1, true)
  return string.sub(member, at + 17)
end

-- Up to `n` pending tasks of lanes other than `pending`, in lane order (bulk operations).
local function take_lanes(F, n)
  if n <= 0 then return {} end
  local members = redis.call('ZRANGE', F.ready, 0, n - 1)
  if #members == 0 then return {} end
  call_chunked('ZREM', F.ready, members)
  local ids = {}
  for i, m in ipairs(members) do ids[i] = member_id(m) end
  call_chunked('HDEL', F.laneof, ids)
  return ids
end

-- The attempts of `ids` ended (or never started): free the slots they hold, once. A
-- lane that waited for one of those slots takes its turn again, and an idle worker is
-- woken for it.
-- Lanes parked for a slot of `limit` (not "q") take their turn again; whether any did.
local function unpark(F, limit)
  local rest = string.sub(limit, 2)
  local lanes = {}
  for p = 0, 9 do lanes[p + 1] = p .. rest end
  local status = redis.call('HMGET', F.lanes, unpack(lanes))
  local n = 0
  for i = 1, 10 do
    if status[i] == 'c' then
      redis.call('HSET', F.lanes, lanes[i], 'r')
      enter_rotation(F, lanes[i])
      n = n + 1
    end
  end
  if n > 0 and redis.call('HINCRBY', F.lanes, '#parked', -n) <= 0 then
    redis.call('HDEL', F.lanes, '#parked')
  end
  return n > 0
end

local function release(F, ids)
  if #ids == 0 or not redis.call('HGET', F.running, '#held') then return end
  local held = call_chunked('HMGET', F.hold, ids)
  local freed, per = 0, {}
  for i = 1, #ids do
    local h = held[i]
    if h then
      freed = freed + 1
      for limit in string.gmatch(h, '[^\1]+') do per[limit] = (per[limit] or 0) + 1 end
    end
  end
  if freed == 0 then return end
  local wake = false
  for limit, n in pairs(per) do
    if redis.call('HINCRBY', F.running, limit, -n) <= 0 then
      redis.call('HDEL', F.running, limit)
    end
    if limit == 'q' then
      wake = true
    elseif unpark(F, limit) then
      wake = true
    end
  end
  call_chunked('HDEL', F.hold, ids)
  if redis.call('HINCRBY', F.running, '#held', -freed) <= 0 then
    redis.call('HDEL', F.running, '#held')
  end
  if wake then ring(F) end
end

-- Rate windows: a log of starts per limit. Trims the old entries of `limit` and returns
-- how many more starts its window takes now (0: none, then also when the next is).
local function rate_room(F, limit, n, per, now)
  local base = limit .. '\1'
  local stop = '(' .. limit .. '\2'
  redis.call('ZREMRANGEBYLEX', F.rlog, '[' .. base, '(' .. base .. pad(now - per + 1, 15))
  local used = redis.call('ZLEXCOUNT', F.rlog, '[' .. base, stop)
  if used < n then return n - used, 0 end
  -- Full: room again once the (used - n + 1)th oldest start is `per` old.
  local oldest = redis.call('ZRANGEBYLEX', F.rlog, '[' .. base, stop, 'LIMIT', 0, used - n + 1)
  local at = tonumber(string.sub(oldest[#oldest], #base + 1, #base + 15))
  return 0, at + per
end

-- How many more tasks limit `limit` (declared `s`) lets start now; when none, also the
-- server time its rate window has room again (0: it waits for a slot instead).
local function room(F, limit, s, now)
  local free = math.huge
  if s[3] > 0 then
    free = s[3] - tonumber(redis.call('HGET', F.running, limit) or '0')
    if free <= 0 then return 0, 0 end
  end
  if s[1] > 0 then
    local r, at = rate_room(F, limit, s[1], s[2], now)
    if r <= 0 then return 0, at end
    if r < free then free = r end
  end
  return free, 0
end

-- `k` tasks of `limit` (declared `s`) start now: log them in its rate window and take
-- as many of its slots (recorded per task by the caller).
local function count_starts(F, limit, s, k, now)
  if k <= 0 then return end
  if s[3] > 0 then redis.call('HINCRBY', F.running, limit, k) end
  if s[1] > 0 then
    local last = redis.call('HINCRBY', F.lanes, '#rs', k)
    local entries = {}
    local stamp = limit .. '\1' .. pad(now, 15) .. ':'
    for i = 1, k do
      entries[#entries + 1] = 0
      entries[#entries + 1] = stamp .. (last - i)
    end
    call_chunked('ZADD', F.rlog, entries)
    redis.call('ZADD', F.rlim, now + s[2], limit)
  end
end

-- A workflow step (`step`: "<flow id>:<index>", "" for a plain task) ended: `kind` is
-- completed, archived or revoked. Its flow is told by whoever drains the outbox
-- (_flows.py): the flow's keys live in another slot.
local function report_step(F, step, kind)
  if step and step ~= '' then redis.call('LPUSH', F.outbox, step .. '|' .. kind) end
end
