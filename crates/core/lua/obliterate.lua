--[[
  obliterate: deletes a paused queue and all its jobs, within a budget per call.

  KEYS: 1 meta, 2 active, 3 wait, 4 paused, 5 prioritized, 6 delayed, 7 completed, 8 failed,
        9 waiting-children, 10 repeat
  ARGV: 1 key prefix of the queue, 2 budget (jobs per call), 3 "force" or ""
  Reply: -1 the queue is not paused; -2 jobs are active and "force" was not given;
         1 the budget ran out (call again); 0 everything is gone

  The limiter key survives (it may carry a manual rate limit), as in BullMQ. The id counter
  is deleted, so automatic ids restart at 1.
]]
local prefix, budget = ARGV[1], tonumber(ARGV[2])
if redis.call("HEXISTS", KEYS[1], "paused") == 0 then
  return -1
end
if ARGV[3] ~= "force" and redis.call("LLEN", KEYS[2]) > 0 then
  return -2
end
local function take_list(key)
  while budget > 0 do
    local id = redis.call("RPOP", key)
    if not id then return end
    bp_delete_job(prefix, id)
    budget = budget - 1
  end
end
local function take_set(key)
  while budget > 0 do
    local batch = redis.call("ZRANGE", key, 0, math.min(budget, 1000) - 1)
    if #batch == 0 then return end
    for _, id in ipairs(batch) do
      bp_delete_job(prefix, id)
      redis.call("ZREM", key, id)
      budget = budget - 1
    end
  end
end
take_list(KEYS[2])
take_list(KEYS[3])
take_list(KEYS[4])
for _, k in ipairs({ KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9] }) do
  take_set(k)
end
if budget <= 0 then
  return 1
end
for _, sid in ipairs(redis.call("ZRANGE", KEYS[10], 0, -1)) do
  redis.call("DEL", prefix .. "repeat:" .. sid)
end
redis.call("DEL", KEYS[10], prefix .. "events", prefix .. "delay", prefix .. "stalled-check",
  prefix .. "stalled", prefix .. "id", prefix .. "pc", prefix .. "marker", prefix .. "metrics:completed",
  prefix .. "metrics:completed:data", prefix .. "metrics:failed", prefix .. "metrics:failed:data",
  KEYS[1])
return 0
