--[[
  update_progress: stores a job's progress and announces it.

  KEYS: 1 job hash, 2 events, 3 meta
  ARGV: 1 job id, 2 progress as JSON text, 3 default maxLenEvents
  Reply: 0, or -1 when the job does not exist
]]
if redis.call("EXISTS", KEYS[1]) == 0 then
  return -1
end
redis.call("HSET", KEYS[1], "progress", ARGV[2])
local maxEvents = redis.call("HGET", KEYS[3], "opts.maxLenEvents") or ARGV[3]
redis.call("XADD", KEYS[2], "MAXLEN", "~", maxEvents, "*", "event", "progress", "jobId", ARGV[1],
  "data", ARGV[2])
return 0
