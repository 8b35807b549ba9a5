--[[
  drain: deletes every job that waits (wait, paused, prioritized, and delayed when asked),
  except the pending iterations of job schedulers. No events, as in BullMQ.

  KEYS: 1 wait, 2 paused, 3 prioritized, 4 delayed, 5 repeat, 6 pc
  ARGV: 1 key prefix of the queue, 2 "1" to include delayed jobs
  Reply: the number of jobs deleted
]]
local prefix = ARGV[1]
local n = 0
local function drain_list(key)
  for _, id in ipairs(redis.call("LRANGE", key, 0, -1)) do
    if not bp_is_scheduler_iteration(KEYS[5], id) then
      bp_delete_job(prefix, id)
      redis.call("LREM", key, 0, id)
      n = n + 1
    end
  end
end
local function drain_set(key)
  for _, id in ipairs(redis.call("ZRANGE", key, 0, -1)) do
    if not bp_is_scheduler_iteration(KEYS[5], id) then
      bp_delete_job(prefix, id)
      redis.call("ZREM", key, id)
      n = n + 1
    end
  end
end
drain_list(KEYS[1])
drain_list(KEYS[2])
drain_set(KEYS[3])
if ARGV[2] == "1" then
  drain_set(KEYS[4])
end
if redis.call("ZCARD", KEYS[3]) == 0 then
  redis.call("DEL", KEYS[6])
end
return n
