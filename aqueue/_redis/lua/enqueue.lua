-- enqueue: write one or more new tasks of one queue.
--
-- KEYS[1] pending    LIST  ids waiting to run (claimed from the RIGHT, new ids LPUSHed)
-- KEYS[2] scheduled  ZSET  id -> due time (ms)
-- KEYS[3] tasks      HASH  id -> "<max_retry>|<unique digest>|<msgpack body>" (_codec)
-- KEYS[4] states     HASH  id -> state ("pending", "scheduled", "@<token>" when active, ...)
-- KEYS[5] bell       LIST  wakes an idle worker (lib/flow.lua)
-- KEYS[6] uniq       HASH  unique digest -> id holding the lock     } modes "unique" and
-- KEYS[7] uniq_exp   ZSET  unique digest -> lock expiry (ms)        } "cron" only
-- KEYS[8] cron       HASH  cron entry -> last tick enqueued (ms)    } mode "cron" only
-- KEYS[9] cronlog    LIST  "<entry>|<tick ms>|<id>", newest first   }
-- KEYS[10..23] the flow-control keys (QueueKeys.flow()), only when a task of the call
--         has a priority or a limit key: it waits in its lane (lib/flow.lua)
-- ARGV[1] mode: "plain" (each task as 3 arguments: id, message, due), "unique" (each
--         task as 5 arguments: id, message, due, unique digest ("" = none), unique ttl
--         (ms)) or "cron" (one task of 5 arguments, for one tick of a cron entry); due is
--         ms, 0 = now. "plain" declares 5 keys, "unique" 7, "cron" 9; with the flow-control
--         keys, 9 come first (a key a mode does not use is any key of the queue).
-- ARGV[2] now (ms)
-- ARGV[3..5] mode "cron" only: cron entry, cron tick (ms), how many cronlog items to keep
-- ARGV[3.. or 6..] the tasks
--
-- A plain enqueue sends only what it uses: 3 arguments a task, and the flow-control
-- keys only for tasks that need them, which keeps the hot path's calls small. A task of
-- priority 0 without a limit key goes to the plain list even if its type has limits:
-- the claim script moves it to its lane (looking its type up here would cost every
-- enqueue the flow-control keys).
-- Returns one reply per task: "ok", {"conflict", state} or {"dup", holder id}; or
-- "skip" when the cron tick was already enqueued (by this or any other worker): the
-- check and the write are one atomic step, so each tick is enqueued exactly once.
-- include: flow
-- A task is checked and written as a unit, so a refused task writes nothing; the
-- tasks of one call are independent (one refusal does not undo the others).
local pending, scheduled, tasks, states = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local bell, uniq, uniq_exp, cron, cronlog = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local F = nil
if #KEYS > 9 then F = flow_keys(10) end
local mode, now = ARGV[1], tonumber(ARGV[2])
local size, first = 5, 3
if mode == 'plain' then size = 3 end
if mode == 'cron' then
  local entry, tick, keep = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
  first = 6
  if tonumber(redis.call('HGET', cron, entry) or '-1') >= tick then return 'skip' end
  redis.call('HSET', cron, entry, tick)
  redis.call('LPUSH', cronlog, entry .. '|' .. tick .. '|' .. ARGV[first])
  redis.call('LTRIM', cronlog, 0, keep - 1)
end
local out = {}
local woke = false
for i = first, #ARGV, size do
  local id, msg, due = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local digest = size == 5 and ARGV[i + 3] or ''
  local state = redis.call('HGET', states, id)
  if state then
    out[#out + 1] = {'conflict', state}
  else
    local holder = false
    if digest ~= '' then
      holder = redis.call('HGET', uniq, digest)
      if holder then
        local exp = tonumber(redis.call('ZSCORE', uniq_exp, digest) or '0')
        if exp <= now then holder = false end
      end
    end
    if holder then
      out[#out + 1] = {'dup', holder}
    else
      if digest ~= '' then
        redis.call('HSET', uniq, digest, id)
        redis.call('ZADD', uniq_exp, now + tonumber(ARGV[i + 4]), digest)
      end
      redis.call('HSET', tasks, id, msg)
      if due > now then
        redis.call('HSET', states, id, 'scheduled')
        redis.call('ZADD', scheduled, due, id)
      else
        redis.call('HSET', states, id, 'pending')
        if F then
          push_ready(F, id, msg, false)
        else
          redis.call('LPUSH', pending, id)
          woke = true
        end
      end
      out[#out + 1] = 'ok'
    end
  end
end
if woke and redis.call('LLEN', bell) == 0 then redis.call('LPUSH', bell, '1') end
return out
