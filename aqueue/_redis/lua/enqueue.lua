-- enqueue: write one or more new tasks of one queue.
--
-- KEYS[1] pending    LIST  ids waiting to run (claimed from the RIGHT, new ids LPUSHed)
-- KEYS[2] scheduled  ZSET  id -> due time (ms)
-- KEYS[3] tasks      HASH  id -> "<max_retry>|<unique digest>|<msgpack body>" (_codec)
-- KEYS[4] states     HASH  id -> state ("pending", "scheduled", "@<token>" when active, ...)
-- KEYS[5] uniq       HASH  unique digest -> id holding the lock     } only when a task of
-- KEYS[6] uniq_exp   ZSET  unique digest -> lock expiry (ms)        } the call is unique
-- KEYS[7] cron       HASH  cron entry -> last tick enqueued (ms)    } only for a cron
-- KEYS[8] cronlog    LIST  "<entry>|<tick ms>|<id>", newest first   } tick
-- ARGV[1] now (ms)
-- ARGV[2] group size: 3 (id, message, due) or 5 (id, message, due, unique digest ("" =
--         none), unique ttl (ms)); due is ms, 0 = now
-- ARGV[3..5] with 8 keys only: cron entry, cron tick (ms), how many cronlog items to keep
-- ARGV[3.. or 6..] the tasks, in groups of the size above
--
-- A plain enqueue declares and sends only what it touches: 4 keys and 3 arguments a
-- task, which keeps the hot path's calls small.
-- Returns one reply per task: "ok", {"conflict", state} or {"dup", holder id}; or
-- "skip" when the cron tick was already enqueued (by this or any other worker): the
-- check and the write are one atomic step, so each tick is enqueued exactly once.
-- A task is checked and written as a unit, so a refused task writes nothing; the
-- tasks of one call are independent (one refusal does not undo the others).
local now, size = tonumber(ARGV[1]), tonumber(ARGV[2])
local first = 3
if #KEYS == 8 then
  local entry, tick = ARGV[3], tonumber(ARGV[4])
  if tonumber(redis.call('HGET', KEYS[7], entry) or '-1') >= tick then return 'skip' end
  redis.call('HSET', KEYS[7], entry, tick)
  redis.call('LPUSH', KEYS[8], entry .. '|' .. tick .. '|' .. ARGV[6])
  redis.call('LTRIM', KEYS[8], 0, tonumber(ARGV[5]) - 1)
  first = 6
end
local out = {}
for i = first, #ARGV, size do
  local id, msg, due = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local digest = size == 5 and ARGV[i + 3] or ''
  local state = redis.call('HGET', KEYS[4], id)
  if state then
    out[#out + 1] = {'conflict', state}
  else
    local holder = false
    if digest ~= '' then
      holder = redis.call('HGET', KEYS[5], digest)
      if holder then
        local exp = tonumber(redis.call('ZSCORE', KEYS[6], digest) or '0')
        if exp <= now then holder = false end
      end
    end
    if holder then
      out[#out + 1] = {'dup', holder}
    else
      if digest ~= '' then
        redis.call('HSET', KEYS[5], digest, id)
        redis.call('ZADD', KEYS[6], now + tonumber(ARGV[i + 4]), digest)
      end
      redis.call('HSET', KEYS[3], id, msg)
      if due > now then
        redis.call('HSET', KEYS[4], id, 'scheduled')
        redis.call('ZADD', KEYS[2], due, id)
      else
        redis.call('HSET', KEYS[4], id, 'pending')
        redis.call('LPUSH', KEYS[1], id)
      end
      out[#out + 1] = 'ok'
    end
  end
end
return out
