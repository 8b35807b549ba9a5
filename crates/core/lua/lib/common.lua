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

-- Lock check before a worker gives a job up: 0 when `token` may release the job's lock
-- (token "0" skips the check), else -2 (no lock) or -6 (another token holds it).
local function bp_check_lock(lockKey, token)
  if token == "0" then
    return 0
  end
  local holder = redis.call("GET", lockKey)
  if not holder then
    return -2
  end
  if holder ~= token then
    return -6
  end
  return 0
end

-- Releases a lock that bp_check_lock accepted.
local function bp_release_lock(lockKey, stalledKey, jobId, token)
  if token ~= "0" then
    redis.call("DEL", lockKey)
    redis.call("SREM", stalledKey, jobId)
  end
end

-- Deletes a job's hash and sub-keys, leaving its deduplication key alone (retention does not
-- end a throttle window).
local function bp_delete_job_keys(jobKey)
  redis.call("DEL", jobKey, jobKey .. ":logs", jobKey .. ":lock", jobKey .. ":dependencies",
    jobKey .. ":processed", jobKey .. ":failed", jobKey .. ":unsuccessful")
end

-- Moves delayed jobs due at or before `now` (at most 1000) to wait (LPUSH) or prioritized,
-- with delay := 0 and a `waiting(prev=delayed)` event each; marker "0" unless paused/maxed.
-- k: wait, prioritized, delayed, pc, marker, events. Ids whose hash is gone are dropped.
local function bp_promote_due(k, prefix, now, pausedOrMaxed)
  local ids = redis.call("ZRANGEBYSCORE", k.delayed, 0, (now + 1) * 4096 - 1, "LIMIT", 0, 1000)
  if #ids == 0 then
    return
  end
  redis.call("ZREM", k.delayed, unpack(ids))
  local moved = false
  for _, id in ipairs(ids) do
    local jobKey = prefix .. id
    if redis.call("EXISTS", jobKey) == 1 then
      local priority = tonumber(redis.call("HGET", jobKey, "priority")) or 0
      if priority > 0 then
        local seq = redis.call("INCR", k.pc) % 4294967296
        redis.call("ZADD", k.prioritized, priority * 4294967296 + seq, id)
      else
        redis.call("LPUSH", k.wait, id)
      end
      redis.call("XADD", k.events, "*", "event", "waiting", "jobId", id, "prev", "delayed")
      redis.call("HSET", jobKey, "delay", 0)
      moved = true
    end
  end
  if moved and not pausedOrMaxed then
    redis.call("ZADD", k.marker, 0, "0")
  end
end

-- Takes the next job id into active: wait from the right (RPOPLPUSH), else the lowest
-- prioritized score (LPUSH active; `pc` deleted once prioritized is empty). Legacy "0:"
-- markers and ids without a job hash are dropped on the way. Returns the id and the job's
-- fields (HGETALL, flat), or nil.
local function bp_take_next(k, prefix)
  while true do
    local id = redis.call("RPOPLPUSH", k.wait, k.active)
    if id then
      if string.sub(id, 1, 2) ~= "0:" then
        local flat = redis.call("HGETALL", prefix .. id)
        if #flat > 0 then
          return id, flat
        end
      end
      redis.call("LREM", k.active, 1, id)
    else
      local popped = redis.call("ZPOPMIN", k.prioritized)
      if not popped[1] then
        redis.call("DEL", k.pc)
        return nil
      end
      local flat = redis.call("HGETALL", prefix .. popped[1])
      if #flat > 0 then
        redis.call("LPUSH", k.active, popped[1])
        return popped[1], flat
      end
    end
  end
end

-- Activation of a job whose fields `flat` (HGETALL) were just read: sets processedOn, pb
-- (when named) and ats + 1 with one HSET. `flat` is left as read: the caller applies the
-- same three fields to its copy. Returns whether the job carries `defa`.
local function bp_activate_fields(jobKey, flat, nowText, name)
  local ats, defa = "1", false
  for i = 1, #flat, 2 do
    local field = flat[i]
    if field == "ats" then
      -- tostring formats with printf; "1" (a first attempt) needs no formatting.
      local started = tonumber(flat[i + 1])
      if started then
        ats = tostring(started + 1)
      end
    elseif field == "defa" then
      defa = true
    end
  end
  if name then
    redis.call("HSET", jobKey, "processedOn", nowText, "pb", name, "ats", ats)
  else
    redis.call("HSET", jobKey, "processedOn", nowText, "ats", ats)
  end
  return defa
end

-- The fetch shared by move_to_active and the fetch-next step of the finish scripts.
-- k: wait, active, prioritized, events, limiter, delayed, meta, pc, marker.
-- f: now (number), nowText, tokens (list), lockDuration, limMax, limDuration (numbers or
-- nil), name (string or nil).
-- Appends to `out` (a new table when nil) and returns it, as one flat list: rateLimitTtl,
-- nextDelayedScoreText or "", pausedOrMaxed 0/1, then per activated job, in the order of
-- the tokens (the i-th job holds the i-th token): its id, the number of fields read, and
-- the fields as HGETALL read them before the activation's own writes (processedOn, pb when
-- named, ats + 1; the caller knows them and applies them). Flat because every nested table
-- costs Redis a separate reply node and several lookups when it converts the reply.
--
-- `meta` is HMGET meta paused concurrency max duration (more fields may follow), when the
-- caller has read it already; nil to have it read here.
local function bp_fetch(k, prefix, f, out, meta)
  meta = meta or redis.call("HMGET", k.meta, "paused", "concurrency", "max", "duration")
  local paused = meta[1] ~= false
  local concurrency = tonumber(meta[2])
  local function maxed()
    return concurrency ~= nil and redis.call("LLEN", k.active) >= concurrency
  end
  bp_promote_due(k, prefix, f.now, paused or maxed())

  local maxJobs = tonumber(meta[3]) or f.limMax
  local duration = f.limDuration or tonumber(meta[4])
  if maxJobs and (not duration or duration <= 0) then
    maxJobs = nil
  end

  local reply = out or {}
  local base = #reply
  reply[base + 1], reply[base + 2], reply[base + 3] = 0, "", 0
  local fetched = 0
  local ranOut = false
  local function activate(id, token, flat)
    local jobKey = prefix .. id
    if token ~= "0" then
      redis.call("SET", jobKey .. ":lock", token, "PX", f.lockDuration)
    end
    redis.call("XADD", k.events, "*", "event", "active", "jobId", id, "prev", "waiting")
    local defa = bp_activate_fields(jobKey, flat, f.nowText, f.name)
    if maxJobs and not defa then
      if redis.call("INCR", k.limiter) == 1 then
        redis.call("PEXPIRE", k.limiter, math.floor(duration))
      end
    end
    local r = #reply
    reply[r + 1] = id
    reply[r + 2] = #flat
    for i = 1, #flat do
      reply[r + 2 + i] = flat[i]
    end
    fetched = fetched + 1
  end

  -- Without a limiter, a global concurrency or a pause nothing can stop the batch part way,
  -- so the jobs waiting are taken from wait in one pop and put in active in one push: the
  -- same lists, in the same order, as one RPOPLPUSH per job.
  local tokens = f.tokens
  local first = 1
  if #tokens > 1 and not maxJobs and concurrency == nil and not paused then
    local popped = redis.call("RPOP", k.wait, tostring(#tokens))
    if popped then
      local taken = {}
      for _, id in ipairs(popped) do
        if string.sub(id, 1, 2) ~= "0:" then
          local flat = redis.call("HGETALL", prefix .. id)
          if #flat > 0 then
            taken[#taken + 1] = { id, flat }
          end
        end
      end
      if #taken > 0 then
        local ids = {}
        for i, t in ipairs(taken) do
          ids[i] = t[1]
        end
        redis.call("LPUSH", k.active, unpack(ids))
        for i, t in ipairs(taken) do
          activate(t[1], tokens[i], t[2])
        end
      end
      first = #taken + 1
    end
  end

  for ti = first, #tokens do
    local token = tokens[ti]
    if maxJobs then
      local used = tonumber(redis.call("GET", k.limiter)) or 0
      if used >= maxJobs then
        local ttl = redis.call("PTTL", k.limiter)
        if ttl == 0 then
          redis.call("DEL", k.limiter)
        end
        if ttl > 0 then
          reply[base + 1] = ttl
          break
        end
      end
    end
    if paused or maxed() then
      reply[base + 3] = 1
      break
    end
    local id, flat = bp_take_next(k, prefix)
    if not id then
      ranOut = true
      break
    end
    activate(id, token, flat)
  end
  if fetched > 0 then
    redis.call("ZADD", k.marker, "0", "0")
  end
  if ranOut then
    local head = redis.call("ZRANGE", k.delayed, 0, 0, "WITHSCORES")
    if head[2] then
      reply[base + 2] = head[2]
    end
  end
  return reply
end

-- Reads the fetch arguments that start at ARGV[first]: now, lock duration, limiter max or "",
-- limiter duration or "", worker name or "", then the tokens up to the end of ARGV.
local function bp_fetch_args(first)
  local name = ARGV[first + 4]
  if name == "" then
    name = nil
  end
  local tokens = {}
  for i = first + 5, #ARGV do
    tokens[#tokens + 1] = ARGV[i]
  end
  return {
    now = tonumber(ARGV[first]),
    nowText = ARGV[first],
    lockDuration = ARGV[first + 1],
    limMax = tonumber(ARGV[first + 2]),
    limDuration = tonumber(ARGV[first + 3]),
    name = name,
    tokens = tokens,
  }
end

-- keepLastIfActive hand-over: creates the job stored in `dn:<dedupId>` as an add would
-- (hash, `added`, then `waiting` or `delayed`, marker), consuming an `id` value, and points
-- the deduplication key at it without TTL. Timestamp: the stored opts' `timestamp`, else now.
-- Should the stored id exist by now, nothing is created and `duplicated` is emitted instead.
-- Parent fields a Node producer may store (pk, pd, pdk) are ignored: flows are out of scope.
-- k: wait, meta, active, marker, prioritized, pc, delayed, events, id.
local function bp_create_stored_job(k, prefix, dedupId, now, maxEvents)
  local dnKey = prefix .. "dn:" .. dedupId
  local flat = redis.call("HGETALL", dnKey)
  redis.call("DEL", dnKey)
  local stored = {}
  for i = 1, #flat, 2 do
    stored[flat[i]] = flat[i + 1]
  end
  local jobId = stored["jid"]
  if not jobId or jobId == "" then
    return
  end
  redis.call("INCR", k.id)
  local jobKey = prefix .. jobId
  if redis.call("EXISTS", jobKey) == 1 then
    redis.call("XADD", k.events, "MAXLEN", "~", maxEvents, "*", "event", "duplicated", "jobId", jobId)
    return
  end
  local optsText = stored["opts"] or "{}"
  local ok, opts = pcall(cjson.decode, optsText)
  if not ok or type(opts) ~= "table" then
    opts = {}
  end
  local function num(v)
    if type(v) == "number" then
      return math.floor(v)
    end
    return 0
  end
  local delay = num(opts["delay"])
  local priority = num(opts["priority"])
  local ts = now
  if type(opts["timestamp"]) == "number" then
    ts = math.floor(opts["timestamp"])
  end
  local name = stored["name"] or ""
  local fields = { "name", name, "data", stored["data"] or "{}", "opts", optsText,
    "timestamp", ts, "delay", delay, "priority", priority, "deid", dedupId }
  if stored["rjk"] then
    fields[#fields + 1] = "rjk"
    fields[#fields + 1] = stored["rjk"]
  end
  redis.call("HSET", jobKey, unpack(fields))
  redis.call("SET", prefix .. "de:" .. dedupId, jobId)
  redis.call("XADD", k.events, "*", "event", "added", "jobId", jobId, "name", name)
  if delay > 0 then
    local due = ts + delay
    redis.call("ZADD", k.delayed, bp_delayed_score(k.delayed, due), jobId)
    redis.call("XADD", k.events, "MAXLEN", "~", maxEvents, "*", "event", "delayed", "jobId", jobId,
      "delay", due)
    bp_mark_earliest_delayed(k.delayed, k.marker)
  else
    bp_enqueue(k, jobId, priority, opts["lifo"] == true)
    redis.call("XADD", k.events, "MAXLEN", "~", maxEvents, "*", "event", "waiting", "jobId", jobId)
  end
end

-- 0 when the job exists, `token` holds its lock and the job is in `active`; otherwise the
-- refusal code (-1 no job, -2/-6 lock, -3 not active). Nothing is written.
local function bp_check_active(jobKey, lockKey, activeKey, jobId, token)
  if redis.call("EXISTS", jobKey) == 0 then
    return -1
  end
  local lockCode = bp_check_lock(lockKey, token)
  if lockCode ~= 0 then
    return lockCode
  end
  if not redis.call("LPOS", activeKey, jobId) then
    return -3
  end
  return 0
end
