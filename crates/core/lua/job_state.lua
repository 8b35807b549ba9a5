--[[
  job_state: where a job is.

  KEYS: 1 completed, 2 failed, 3 delayed, 4 prioritized, 5 active, 6 wait, 7 paused,
        8 waiting-children
  ARGV: 1 job id
  Reply: "completed", "failed", "delayed", "prioritized", "active", "waiting",
         "waiting-children" or "unknown" (checked in that order, as BullMQ does)
]]
local id = ARGV[1]
if redis.call("ZSCORE", KEYS[1], id) then return "completed" end
if redis.call("ZSCORE", KEYS[2], id) then return "failed" end
if redis.call("ZSCORE", KEYS[3], id) then return "delayed" end
if redis.call("ZSCORE", KEYS[4], id) then return "prioritized" end
if redis.call("LPOS", KEYS[5], id) then return "active" end
if redis.call("LPOS", KEYS[6], id) then return "waiting" end
if redis.call("LPOS", KEYS[7], id) then return "waiting" end
if redis.call("ZSCORE", KEYS[8], id) then return "waiting-children" end
return "unknown"
