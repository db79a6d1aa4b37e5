-- include: chunked
-- forget: delete everything stored about tasks (a list of ids): their field in each
-- per-task hash (message, state, retry count, last error, last failure time, result,
-- progress) and any cancel request. Their unique locks are the caller's business: a
-- task in a final state holds none.
local function forget_tasks(ids, tasks, states, retried, errors, failed_at, results, progress,
                            cancels)
  for _, hash in ipairs({tasks, states, retried, errors, failed_at, results, progress}) do
    call_chunked('HDEL', hash, ids)
  end
  call_chunked('SREM', cancels, ids)
end
