--[[
  promote: runs a delayed job now.

  KEYS: 1 job hash, 2 delayed, 3 wait, 4 meta, 5 prioritized, 6 active, 7 pc, 8 events, 9 marker
  ARGV: 1 job id
  Reply: 0, -1 the job does not exist, -3 it is not delayed
]]
local id = ARGV[1]
if redis.call("EXISTS", KEYS[1]) == 0 then
  return -1
end
if redis.call("ZREM", KEYS[2], id) == 0 then
  return -3
end
local priority = tonumber(redis.call("HGET", KEYS[1], "priority")) or 0
bp_enqueue({ wait = KEYS[3], meta = KEYS[4], active = KEYS[6], marker = KEYS[9],
  prioritized = KEYS[5], pc = KEYS[7] }, id, priority, false)
redis.call("HSET", KEYS[1], "delay", 0)
redis.call("XADD", KEYS[8], "*", "event", "waiting", "jobId", id, "prev", "delayed")
return 0
