-- common: helpers prepended to every bullpen script that needs them (not a script itself).

-- Whether adds and promotions should skip the wake-up marker: the queue is paused, or its
-- global concurrency is reached.
local function bp_paused_or_maxed(metaKey, activeKey)
  if redis.call("HEXISTS", metaKey, "paused") == 1 then
    return true
  end
  local limit = redis.call("HGET", metaKey, "concurrency")
  return limit ~= false and redis.call("LLEN", activeKey) >= tonumber(limit)
end

-- Puts a job where a worker takes it next: wait (LPUSH, or RPUSH for lifo) for priority 0,
-- else prioritized; then the marker "0" unless paused or maxed.
local function bp_enqueue(k, jobId, priority, lifo)
  if priority > 0 then
    local seq = redis.call("INCR", k.pc) % 4294967296
    redis.call("ZADD", k.prioritized, priority * 4294967296 + seq, jobId)
  elseif lifo then
    redis.call("RPUSH", k.wait, jobId)
  else
    redis.call("LPUSH", k.wait, jobId)
  end
  if not bp_paused_or_maxed(k.meta, k.active) then
    redis.call("ZADD", k.marker, 0, "0")
  end
end

-- Delayed score: due * 4096 plus a sequence keeping insertion order within one ms.
local function bp_delayed_score(delayedKey, due)
  local low = due * 4096
  local last = redis.call("ZREVRANGEBYSCORE", delayedKey, low + 4095, low, "WITHSCORES", "LIMIT", 0, 1)
  if last[2] then
    local seq = tonumber(last[2]) - low + 1
    if seq > 4095 then seq = 4095 end
    return low + seq
  end
  return low
end

-- Marker "1" carries the due time of the earliest delayed job.
local function bp_mark_earliest_delayed(delayedKey, markerKey)
  local head = redis.call("ZRANGE", delayedKey, 0, 0, "WITHSCORES")
  if head[2] then
    redis.call("ZADD", markerKey, tonumber(head[2]) / 4096, "1")
  end
end

-- Deletes a job's hash and sub-keys, and its deduplication key if it still points at it.
local function bp_delete_job(prefix, jobId)
  local jobKey = prefix .. jobId
  local deid = redis.call("HGET", jobKey, "deid")
  if deid then
    local dkey = prefix .. "de:" .. deid
    if redis.call("GET", dkey) == jobId then
      redis.call("DEL", dkey, prefix .. "dn:" .. deid)
    end
  end
  redis.call("DEL", jobKey, jobKey .. ":logs", jobKey .. ":lock", jobKey .. ":dependencies",
    jobKey .. ":processed", jobKey .. ":failed", jobKey .. ":unsuccessful")
end

-- Whether an id is the pending iteration of a live job scheduler (never drained or cleaned).
local function bp_is_scheduler_iteration(repeatKey, jobId)
  local sid, millis = string.match(jobId, "^repeat:(.+):(%d+)$")
  if not sid then
    return false
  end
  local score = redis.call("ZSCORE", repeatKey, sid)
  return score ~= false and tonumber(score) == tonumber(millis)
end

local function bp_max_events(metaKey, default)
  return redis.call("HGET", metaKey, "opts.maxLenEvents") or default
end
