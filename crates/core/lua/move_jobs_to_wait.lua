--[[
  move_jobs_to_wait: retries finished jobs (failed or completed) or promotes delayed jobs, in
  batches, oldest first (Queue.retryJobs / Queue.promoteJobs).

  KEYS: 1 source set (failed, completed or delayed), 2 wait, 3 events, 4 meta, 5 active,
        6 marker, 7 pc
  ARGV: 1 key prefix of the queue, 2 batch size, 3 highest score to take,
        4 source state name, 5 default maxLenEvents
  Reply: 1 a full batch was moved (call again), 0 done

  Retried jobs lose finishedOn, processedOn and their returnvalue or failedReason; attempt
  counters are kept. Jobs go to wait with LPUSH (priority ignored, as in BullMQ).
]]
local prefix, count, maxScore, state = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local ids = redis.call("ZRANGEBYSCORE", KEYS[1], 0, maxScore, "LIMIT", 0, count)
if #ids == 0 then
  return 0
end
local maxEvents = bp_max_events(KEYS[4], ARGV[5])
for _, id in ipairs(ids) do
  local jobKey = prefix .. id
  if state == "failed" then
    redis.call("HDEL", jobKey, "finishedOn", "processedOn", "failedReason")
  elseif state == "completed" then
    redis.call("HDEL", jobKey, "finishedOn", "processedOn", "returnvalue")
  end
  redis.call("XADD", KEYS[3], "MAXLEN", "~", maxEvents, "*", "event", "waiting", "jobId", id,
    "prev", state)
end
redis.call("ZREM", KEYS[1], unpack(ids))
redis.call("LPUSH", KEYS[2], unpack(ids))
if not bp_paused_or_maxed(KEYS[4], KEYS[5]) then
  redis.call("ZADD", KEYS[6], 0, "0")
end
if #ids == count then
  return 1
end
return 0
