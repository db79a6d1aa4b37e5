-- stats: a queue's counters of attempts, "p" (processed) and "f" (failed), each as a
-- total and per UTC day ("p:<YYYY-MM-DD>").
local function count_processed(stats, day, n)
  redis.call('HINCRBY', stats, 'p', n)
  redis.call('HINCRBY', stats, 'p:' .. day, n)
end

-- A failed attempt counts as processed too.
local function count_failed(stats, day)
  count_processed(stats, day, 1)
  redis.call('HINCRBY', stats, 'f', 1)
  redis.call('HINCRBY', stats, 'f:' .. day, 1)
end
