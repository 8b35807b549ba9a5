--[[
  reprocess_job: retries one finished job (Job.retry): back to wait, or to prioritized with
  a fresh score when it has a priority.

  KEYS: 1 job hash, 2 events, 3 the finished set (completed or failed), 4 wait, 5 meta,
        6 active, 7 marker, 8 prioritized, 9 pc
  ARGV: 1 job id, 2 "1" when the job is LIFO, 3 "completed" or "failed",
        4 "1" to reset attemptsMade, 5 "1" to reset attemptsStarted, 6 default maxLenEvents
  Reply: 1 done, -1 the job does not exist, -3 it is not in that set
]]
local id = ARGV[1]
if redis.call("EXISTS", KEYS[1]) == 0 then
  return -1
end
if redis.call("ZREM", KEYS[3], id) == 0 then
  return -3
end
local prop = "returnvalue"
if ARGV[3] == "failed" then
  prop = "failedReason"
end
redis.call("HDEL", KEYS[1], "finishedOn", "processedOn", prop)
if ARGV[4] == "1" then
  redis.call("HDEL", KEYS[1], "atm")
end
if ARGV[5] == "1" then
  redis.call("HDEL", KEYS[1], "ats")
end
local priority = tonumber(redis.call("HGET", KEYS[1], "priority")) or 0
bp_enqueue({ wait = KEYS[4], meta = KEYS[5], active = KEYS[6], marker = KEYS[7],
  prioritized = KEYS[8], pc = KEYS[9] }, id, priority, ARGV[2] == "1")
redis.call("XADD", KEYS[2], "MAXLEN", "~", bp_max_events(KEYS[5], ARGV[6]), "*", "event", "waiting",
  "jobId", id, "prev", ARGV[3])
return 1
