--[[
  add_log: appends a line to a job's log, keeping at most keepLogs lines when given.

  KEYS: 1 job hash, 2 job logs list
  ARGV: 1 log line, 2 keepLogs or ""
  Reply: the number of lines kept, or -1 when the job does not exist
]]
if redis.call("EXISTS", KEYS[1]) == 0 then
  return -1
end
local len = redis.call("RPUSH", KEYS[2], ARGV[1])
local keep = tonumber(ARGV[2])
if keep then
  redis.call("LTRIM", KEYS[2], -keep, -1)
  if keep < len then
    return keep
  end
end
return len
