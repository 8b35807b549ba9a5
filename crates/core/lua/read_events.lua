--[[
  read_events: reads the events stream after a position, and says whether entries after
  that position were deleted (trimmed) before they could be read.

  KEYS: 1 events
  ARGV: 1 last id delivered ("0-0" for the start), 2 maximum entries to return
  Reply: { gap 0|1, first id still in the stream or "", entries as XRANGE returns them,
           the stream's last generated id }

  On Redis 7 the stream's max-deleted-entry-id says exactly whether anything after the
  position was deleted. On older servers the first retained id is compared instead, which
  can report a gap that was only a deleted position.
]]
if redis.call("EXISTS", KEYS[1]) == 0 then
  return { 0, "", {}, "0-0" }
end
local function parse(id)
  local ms, seq = string.match(id, "^(%d+)-(%d+)$")
  return tonumber(ms or 0), tonumber(seq or 0)
end
local function after(a, b) -- a > b
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am > bm or (am == bm and as > bs)
end
local info = redis.call("XINFO", "STREAM", KEYS[1])
local maxDeleted, first, lastGenerated = nil, "", "0-0"
for i = 1, #info, 2 do
  if info[i] == "max-deleted-entry-id" then
    maxDeleted = info[i + 1]
  elseif info[i] == "last-generated-id" then
    lastGenerated = info[i + 1]
  elseif info[i] == "first-entry" and type(info[i + 1]) == "table" then
    first = info[i + 1][1]
  end
end
local last = ARGV[1]
local gap = 0
if maxDeleted then
  if after(maxDeleted, last) then gap = 1 end
elseif last ~= "0-0" and first ~= "" and after(first, last) then
  -- Pre-7.0 servers: the oldest retained entry is past our position.
  gap = 1
end
local entries = redis.call("XRANGE", KEYS[1], "(" .. last, "+", "COUNT", tonumber(ARGV[2]))
return { gap, first, entries, lastGenerated }
