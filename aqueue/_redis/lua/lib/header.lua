-- header: the plain-text header of a stored message
-- "<max_retry>|<digest>|<priority>|<type length>|<key length>|<step length>|<type><limit
-- key><step><body>" (the body is the client's msgpack), the only part of a message a
-- script reads. Returns max_retry (a number), the unique digest ("" = none), the
-- priority (a one-character string), the task type, the limit key ("" = none) and the
-- workflow step ("<flow id>:<index>", "" = none). A message stored by a version before
-- flow control ("<max_retry>|<digest>|<body>") reads as priority 0, no key, no step, and
-- an unknown type ("": no type limit counts it).
local function read_header(msg)
  local max_retry, digest, prio, tlen, klen, flen, at =
    string.match(msg, '^(%d+)|([^|]*)|(%d)|(%d+)|(%d+)|(%d+)|()')
  if not at then
    max_retry, digest = string.match(msg, '^(%d+)|([^|]*)|')
    return tonumber(max_retry), digest or '', '0', '', '', ''
  end
  tlen, klen, flen = tonumber(tlen), tonumber(klen), tonumber(flen)
  local ttype = string.sub(msg, at, at + tlen - 1)
  local key = string.sub(msg, at + tlen, at + tlen + klen - 1)
  local step = string.sub(msg, at + tlen + klen, at + tlen + klen + flen - 1)
  return tonumber(max_retry), digest, prio, ttype, key, step
end
