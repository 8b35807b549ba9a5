--[[
  add_job: adds one or more jobs (standard, LIFO, delayed or prioritized), atomically.

  KEYS:
    1 wait        2 meta        3 id          4 delayed     5 prioritized
    6 pc          7 marker      8 events      9 active
  ARGV:
    1 key prefix of the queue, with its trailing colon ("bull:q:")
    2 default maxLenEvents (written to meta when absent)
    3 number of jobs N
    then N groups of 11 values:
      custom id or "", name, data JSON, stored opts JSON, timestamp ms, delay ms, priority,
      lifo "1"/"0", dedup id or "", dedup ttl ms or "",
      dedup flags: 4 characters "1"/"0" for extend, replace, reschedule, keepLastIfActive
  Reply: a flat array, two entries per job: the job id and what happened to it:
    "added", "duplicated" (the custom id existed; nothing changed) or
    "deduplicated" (the id returned is the job that owns the deduplication id)

  Job keys and dedup keys are built here from the prefix, so in Cluster they rely on the
  queue's hash tag, like BullMQ's own scripts.
]]
local prefix = ARGV[1]
local maxEvents = redis.call("HGET", KEYS[2], "opts.maxLenEvents")
if not maxEvents then
  maxEvents = ARGV[2]
  redis.call("HSET", KEYS[2], "opts.maxLenEvents", maxEvents)
end

local function emit_trimmed(...)
  redis.call("XADD", KEYS[8], "MAXLEN", "~", maxEvents, "*", ...)
end

-- Adds never change pause or the active count, so one answer serves the whole call.
local pausedOrMaxed = nil
local function paused_or_maxed()
  if pausedOrMaxed == nil then
    pausedOrMaxed = redis.call("HEXISTS", KEYS[2], "paused") == 1
    local limit = redis.call("HGET", KEYS[2], "concurrency")
    if not pausedOrMaxed and limit and redis.call("LLEN", KEYS[9]) >= tonumber(limit) then
      pausedOrMaxed = true
    end
  end
  return pausedOrMaxed
end

local function place(jobId, ts, delay, priority, lifo)
  if delay > 0 then
    local due = ts + delay
    redis.call("ZADD", KEYS[4], bp_delayed_score(KEYS[4], due), jobId)
    emit_trimmed("event", "delayed", "jobId", jobId, "delay", due)
    bp_mark_earliest_delayed(KEYS[4], KEYS[7])
  elseif priority > 0 then
    local seq = redis.call("INCR", KEYS[6]) % 4294967296
    redis.call("ZADD", KEYS[5], priority * 4294967296 + seq, jobId)
    if not paused_or_maxed() then
      redis.call("ZADD", KEYS[7], 0, "0")
    end
    emit_trimmed("event", "waiting", "jobId", jobId)
  else
    if lifo then
      redis.call("RPUSH", KEYS[1], jobId)
    else
      redis.call("LPUSH", KEYS[1], jobId)
    end
    if not paused_or_maxed() then
      redis.call("ZADD", KEYS[7], 0, "0")
    end
    emit_trimmed("event", "waiting", "jobId", jobId)
  end
end

local function remove_delayed_job(jobId)
  redis.call("ZREM", KEYS[4], jobId)
  redis.call("DEL", prefix .. jobId, prefix .. jobId .. ":logs")
  redis.call("XADD", KEYS[8], "*", "event", "removed", "jobId", jobId, "prev", "delayed")
end

local function set_dedup_key(dkey, jobId, ttl, extend, keepLast)
  if keepLast or not ttl then
    redis.call("SET", dkey, jobId)
  else
    redis.call("SET", dkey, jobId, "PX", ttl)
  end
end

-- Returns the id to answer with when the add is absorbed by deduplication, else nil.
local function deduplicate(newId, dedupId, ttl, flags, g)
  local dkey = prefix .. "de:" .. dedupId
  local dnkey = prefix .. "dn:" .. dedupId
  local extend = string.sub(flags, 1, 1) == "1"
  local replace = string.sub(flags, 2, 2) == "1"
  local reschedule = string.sub(flags, 3, 3) == "1"
  local keepLast = string.sub(flags, 4, 4) == "1"
  local owner = redis.call("GET", dkey)
  -- A key without TTL whose job is gone is stale: forget it.
  if owner and redis.call("PTTL", dkey) == -1 and redis.call("EXISTS", prefix .. owner) == 0 then
    redis.call("DEL", dkey, dnkey)
    owner = false
  end
  if not owner then
    set_dedup_key(dkey, newId, ttl, extend, keepLast)
    return nil
  end
  if replace then
    if redis.call("ZSCORE", KEYS[4], owner) then
      remove_delayed_job(owner)
      redis.call("DEL", dnkey)
      emit_trimmed("event", "deduplicated", "jobId", newId, "deduplicationId", dedupId,
        "deduplicatedJobId", owner)
      if ttl and not extend then
        redis.call("SET", dkey, newId, "KEEPTTL")
      else
        set_dedup_key(dkey, newId, ttl, extend, false)
      end
      return nil
    end
    return owner
  end
  if keepLast and redis.call("LPOS", KEYS[9], owner) then
    redis.call("DEL", dnkey)
    redis.call("HSET", dnkey, "name", ARGV[g + 1], "data", ARGV[g + 2], "opts", ARGV[g + 3], "jid", newId)
    redis.call("PERSIST", dkey)
  elseif extend and ttl and not keepLast then
    redis.call("SET", dkey, owner, "PX", ttl)
  end
  emit_trimmed("event", "deduplicated", "jobId", owner, "deduplicationId", dedupId,
    "deduplicatedJobId", newId)
  if reschedule and redis.call("ZSCORE", KEYS[4], owner) then
    local ts = tonumber(ARGV[g + 4])
    local delay = tonumber(ARGV[g + 5])
    local due = ts + delay
    redis.call("ZADD", KEYS[4], bp_delayed_score(KEYS[4], due), owner)
    redis.call("HSET", prefix .. owner, "delay", delay)
    emit_trimmed("event", "delayed", "jobId", owner, "delay", due)
    bp_mark_earliest_delayed(KEYS[4], KEYS[7])
  end
  return owner
end

local n = tonumber(ARGV[3])
local reply = {}
for i = 0, n - 1 do
  local g = 4 + i * 11
  local customId = ARGV[g]
  local name = ARGV[g + 1]
  local ts = tonumber(ARGV[g + 4])
  local delay = tonumber(ARGV[g + 5])
  local priority = tonumber(ARGV[g + 6])
  local lifo = ARGV[g + 7] == "1"
  local dedupId = ARGV[g + 8]
  local ttl = tonumber(ARGV[g + 9])
  local counter = redis.call("INCR", KEYS[3])
  local jobId = customId
  if jobId == "" then
    jobId = tostring(counter)
  end
  local jobKey = prefix .. jobId
  local outcome = "added"
  if customId ~= "" and redis.call("EXISTS", jobKey) == 1 then
    emit_trimmed("event", "duplicated", "jobId", jobId)
    outcome = "duplicated"
  elseif dedupId ~= "" then
    local owner = deduplicate(jobId, dedupId, ttl, ARGV[g + 10], g)
    if owner then
      jobId = owner
      outcome = "deduplicated"
    end
  end
  if outcome == "added" then
    local fields = { "name", name, "data", ARGV[g + 2], "opts", ARGV[g + 3], "timestamp", ts,
      "delay", delay, "priority", priority }
    if dedupId ~= "" then
      fields[#fields + 1] = "deid"
      fields[#fields + 1] = dedupId
    end
    redis.call("HSET", jobKey, unpack(fields))
    redis.call("XADD", KEYS[8], "*", "event", "added", "jobId", jobId, "name", name)
    place(jobId, ts, delay, priority, lifo)
  end
  reply[#reply + 1] = jobId
  reply[#reply + 1] = outcome
end
return reply
