#!lua flags=allow-oom
-- trim_stats: forget a queue's daily counters older than the history kept.
--
-- KEYS[1] stats  HASH  "p"/"f" totals, "p:<YYYY-MM-DD>"/"f:<YYYY-MM-DD>" per UTC day
-- ARGV[1] the oldest day to keep ("YYYY-MM-DD"; such dates sort as strings)
--
-- The hash holds two fields per day since the last trim, so this stays small.
-- Returns how many fields were removed.
local stats = KEYS[1]
local oldest = ARGV[1]
local removed = 0
for _, field in ipairs(redis.call('HKEYS', stats)) do
  local day = string.match(field, '^[pf]:(.+)$')
  if day and day < oldest then
    removed = removed + redis.call('HDEL', stats, field)
  end
end
return removed
