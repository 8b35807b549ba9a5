--[[
  change_priority: sets a job's priority; a waiting or prioritized job moves accordingly.

  KEYS: 1 job hash, 2 wait, 3 meta, 4 prioritized, 5 active, 6 pc, 7 marker
  ARGV: 1 job id, 2 new priority, 3 "1" for LIFO (front of its priority)
  Reply: 0, or -1 when the job does not exist

  No event, as in BullMQ. Jobs in other states only get the field updated.
]]
local id, priority, lifo = ARGV[1], tonumber(ARGV[2]), ARGV[3] == "1"
if redis.call("EXISTS", KEYS[1]) == 0 then
  return -1
end
local waiting = redis.call("ZREM", KEYS[4], id) == 1 or redis.call("LREM", KEYS[2], -1, id) > 0
if waiting then
  if priority > 0 and lifo then
    redis.call("ZADD", KEYS[4], priority * 4294967296, id)
  else
    bp_enqueue({ wait = KEYS[2], meta = KEYS[3], active = KEYS[5], marker = KEYS[7],
      prioritized = KEYS[4], pc = KEYS[6] }, id, priority, lifo)
  end
end
redis.call("HSET", KEYS[1], "priority", priority)
return 0
