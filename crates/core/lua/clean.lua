--[[
  clean: deletes jobs of one state that are older than a cutoff, up to a limit, and emits
  cleaned(count). Removed jobs get no removed event, as in BullMQ.

  KEYS: 1 the state's key, 2 events, 3 repeat
  ARGV: 1 key prefix of the queue, 2 cutoff ms (now - grace), 3 limit (0 = no limit),
        4 state: completed, failed, delayed, prioritized, wait, paused or active
  Reply: the ids deleted

  Age is the finish time for completed and failed (their score); for the others the first
  present of finishedOn, processedOn and timestamp. Active jobs are only cleaned when no
  worker holds their lock.
]]
local prefix, cutoff, limit, state = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local removed = {}
local function full()
  return limit > 0 and #removed >= limit
end
local function age(id)
  local f = redis.call("HMGET", prefix .. id, "finishedOn", "processedOn", "timestamp")
  return tonumber(f[1] or f[2] or f[3])
end
if state == "completed" or state == "failed" then
  local ids
  if limit > 0 then
    ids = redis.call("ZRANGEBYSCORE", KEYS[1], 0, cutoff, "LIMIT", 0, limit)
  else
    ids = redis.call("ZRANGEBYSCORE", KEYS[1], 0, cutoff)
  end
  for _, id in ipairs(ids) do
    bp_delete_job(prefix, id)
    redis.call("ZREM", KEYS[1], id)
    removed[#removed + 1] = id
  end
else
  local isList = state == "wait" or state == "paused" or state == "active"
  local ids
  if isList then
    ids = redis.call("LRANGE", KEYS[1], 0, -1)
  else
    ids = redis.call("ZRANGE", KEYS[1], 0, -1)
  end
  for i = #ids, 1, -1 do
    if full() then break end
    local id = ids[i]
    local t = age(id)
    local locked = state == "active" and redis.call("EXISTS", prefix .. id .. ":lock") == 1
    if (t == nil or t <= cutoff) and not locked and not bp_is_scheduler_iteration(KEYS[3], id) then
      bp_delete_job(prefix, id)
      if isList then
        redis.call("LREM", KEYS[1], 0, id)
      else
        redis.call("ZREM", KEYS[1], id)
      end
      removed[#removed + 1] = id
    end
  end
end
redis.call("XADD", KEYS[2], "*", "event", "cleaned", "count", #removed)
return removed
