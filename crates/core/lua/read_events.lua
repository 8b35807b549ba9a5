--[[
  read_events: reads the events stream after a position, with what a reader needs to tell
  whether entries after that position were trimmed away before it could read them.

  KEYS: 1 events
  ARGV: 1 last id delivered ("0-0" for the start), 2 maximum entries to return (0 = none)
  Reply: { oldest id still in the stream or "", entries-added, length, last-generated-id,
           entries after the position as XRANGE returns them }

  Streams lose entries from the head only (trimming), so the oldest retained entry is number
  entries-added - length + 1 of all entries ever added. A reader that knows the number of the
  last entry it delivered sees a gap exactly when the oldest retained entry is past its
  position and numbered more than one beyond it. (Entries removed with XDEL break that
  arithmetic and are reported as gaps too.)
]]
if redis.call("EXISTS", KEYS[1]) == 0 then
  return { "", 0, 0, "0-0", {} }
end
local info = redis.call("XINFO", "STREAM", KEYS[1])
local first, added, length, lastGenerated = "", 0, 0, "0-0"
for i = 1, #info, 2 do
  local k, v = info[i], info[i + 1]
  if k == "first-entry" and type(v) == "table" then
    first = v[1]
  elseif k == "entries-added" then
    added = v
  elseif k == "length" then
    length = v
  elseif k == "last-generated-id" then
    lastGenerated = v
  end
end
local entries = {}
local count = tonumber(ARGV[2])
if count > 0 then
  entries = redis.call("XRANGE", KEYS[1], "(" .. ARGV[1], "+", "COUNT", count)
end
return { first, added, length, lastGenerated, entries }
