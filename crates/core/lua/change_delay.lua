--[[
  change_delay: gives a delayed job a new delay counted from now.

  KEYS: 1 job hash, 2 delayed, 3 meta, 4 marker, 5 events
  ARGV: 1 job id, 2 new delay ms, 3 now ms, 4 default maxLenEvents
  Reply: 0, -1 the job does not exist, -3 it is not delayed
]]
local id, delay = ARGV[1], tonumber(ARGV[2])
if redis.call("EXISTS", KEYS[1]) == 0 then
  return -1
end
if not redis.call("ZSCORE", KEYS[2], id) then
  return -3
end
local due = tonumber(ARGV[3]) + delay
redis.call("ZADD", KEYS[2], bp_delayed_score(KEYS[2], due), id)
redis.call("HSET", KEYS[1], "delay", delay)
redis.call("XADD", KEYS[5], "MAXLEN", "~", bp_max_events(KEYS[3], ARGV[4]), "*", "event", "delayed",
  "jobId", id, "delay", due)
bp_mark_earliest_delayed(KEYS[2], KEYS[4])
return 0
