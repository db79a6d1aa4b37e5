-- include: header
-- unique: a task's unique lock (uniq: digest -> id holding it, uniq_exp: digest ->
-- expiry). A task releases the lock only while it still holds it: once the lock's ttl
-- has passed, another task with the same digest may hold it.

-- The unique digest of a stored message ("" = none, or no message).
local function digest_of(msg)
  if not msg then return '' end
  local _, digest = read_header(msg)
  return digest
end

local function release_unique(uniq, uniq_exp, digest, id)
  if digest ~= '' and redis.call('HGET', uniq, digest) == id then
    redis.call('HDEL', uniq, digest)
    redis.call('ZREM', uniq_exp, digest)
  end
end
