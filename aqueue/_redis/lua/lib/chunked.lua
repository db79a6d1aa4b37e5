-- chunked: run a command whose last arguments are a long list, in parts (unpack() takes
-- a bounded number of values), gathering the replies of a command that returns a list.
-- Used by the batched claim.lua and ack.lua (and forget): one call a batch per hash, not
-- a call per task, because a call from Lua costs more than the work it does.
local CHUNK = 500 -- even, so HSET field/value pairs never split
local function call_chunked(cmd, key, values)
  local replies = {}
  for lo = 1, #values, CHUNK do
    local part = redis.call(cmd, key, unpack(values, lo, math.min(lo + CHUNK - 1, #values)))
    if type(part) == 'table' then
      for _, v in ipairs(part) do replies[#replies + 1] = v end
    end
  end
  return replies
end
