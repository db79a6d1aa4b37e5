-- header: the plain-text header of a stored message "<max_retry>|<digest>|<body>", the
-- only part of a message a script reads (the body is the client's msgpack). Returns
-- max_retry (a number) and the unique digest ("" = none).
local function read_header(msg)
  local max_retry, digest = string.match(msg, '^(%d+)|([^|]*)|')
  return tonumber(max_retry), digest or ''
end
