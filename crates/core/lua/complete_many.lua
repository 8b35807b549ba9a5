--[[
  complete_many: completes several active jobs in one call, then optionally fetches the next
  jobs like move_to_active. Each job gets exactly what move_to_finished does for a completion
  (same checks, same writes, same events); the work that does not depend on the job (reading
  meta, trimming the events stream, retention passes, the fetch) is done once per call.

  Per job, checked before anything is written for it: the job exists (-1; a job hash always
  has `name`), it has no pending (-4) or failed (-9) children, its lock (unless token "0")
  exists (-2) and holds the token (-6), and it is in active (-3: LREM removed nothing). A
  refused job is left untouched and does not stop the others.

  Then, per accepted job: lock released (DEL, SREM stalled; one command each for the whole
  call), deduplication key released and the keepLastIfActive hand-over (as
  move_to_finished), atm + 1, and by retention either the job deleted (count 0) or added to
  `completed` with score now (one ZADD for the call), `returnvalue` and `finishedOn`; then
  `completed(jobId, returnvalue, prev=active)`. The events stream is trimmed
  (XTRIM MAXLEN ~ meta.opts.maxLenEvents) once, before the first event. Retention
  passes (age, then count) run once per distinct retention setting, after every job of the
  call was added (the result is the same as passing after each job, except which of several
  jobs finished in the same millisecond counts as newest).

  KEYS:
    1 wait        2 active      3 prioritized 4 events      5 limiter
    6 delayed     7 meta        8 pc          9 marker      10 stalled
    11 completed  12 id
  ARGV:
    1 key prefix of the queue, with its trailing colon ("bull:q:")
    2 default maxLenEvents
    3 n, the number of jobs
    4.. n groups of 8: job id, token, return value JSON, keep count (-1 all, 0 delete,
       n newest), keep age in seconds or "", keep limit per call, the job's new `atm` (its
       `atm` as fetched + 1) and its `deid` as fetched (or ""); neither changes while the job
       is locked, since only a finish changes them and a finish needs the lock
    then "1" to fetch next jobs (else "0") and the fetch arguments of move_to_active from its
    ARGV[2] on: now, lock duration, limiter max or "", limiter duration or "", worker name or
    "", tokens... (now is always given; it is the finish time)
  Reply: one flat array: n codes (0 done, or a negative code), then the fetch reply of
    move_to_active (or 0, "", 0 when no fetch was asked); `drained` is emitted as
    move_to_finished does, when at least one job was completed.
]]
local prefix = ARGV[1]
local n = tonumber(ARGV[3])
local fetchFlag = 4 + n * 8
local f = bp_fetch_args(fetchFlag + 1)
local now = f.now
local nowText = f.nowText

local k = { wait = KEYS[1], active = KEYS[2], prioritized = KEYS[3], events = KEYS[4],
  limiter = KEYS[5], delayed = KEYS[6], meta = KEYS[7], pc = KEYS[8], marker = KEYS[9],
  id = KEYS[12] }
local completedKey = KEYS[11]

local maxEvents = nil
local codes = {}
local passes = {}
local passOrder = {}

-- Every lock in one read. Existence and children: for the whole call in two EXISTS when
-- every job exists and none has children (the usual case), else (or for a single job) one
-- EXISTS per job. The two children keys exist only for a parent job, and every path that
-- deletes a job deletes them with it, so when exactly one of a job's three keys exists it
-- is the job.
local jobKeys = {}
local lockKeys = {}
local childKeys = {}
for i = 0, n - 1 do
  local jobKey = prefix .. ARGV[4 + i * 8]
  jobKeys[i + 1] = jobKey
  lockKeys[i + 1] = jobKey .. ":lock"
  childKeys[2 * i + 1] = jobKey .. ":dependencies"
  childKeys[2 * i + 2] = jobKey .. ":unsuccessful"
end
local holders = {}
local allPlain = false
if n > 0 then
  holders = redis.call("MGET", unpack(lockKeys))
end
if n > 1 then
  allPlain = redis.call("EXISTS", unpack(jobKeys)) == n
    and redis.call("EXISTS", unpack(childKeys)) == 0
end

local done = {}
local doneLocks = {}
local doneArg = {}
local doneKey = {}
for i = 0, n - 1 do
  local a = 4 + i * 8
  local jobId = ARGV[a]
  local token = ARGV[a + 1]
  local jobKey = jobKeys[i + 1]
  local code = 0
  if not allPlain then
    local present = redis.call("EXISTS", jobKey, childKeys[2 * i + 1], childKeys[2 * i + 2])
    if present == 0 then
      code = -1
    elseif present > 1 then
      if redis.call("EXISTS", jobKey) == 0 then
        code = -1
      elseif redis.call("SCARD", childKeys[2 * i + 1]) > 0 then
        code = -4
      elseif redis.call("ZCARD", childKeys[2 * i + 2]) > 0 then
        code = -9
      end
    end
  end
  if code == 0 and token ~= "0" then
    local holder = holders[i + 1]
    if not holder then
      code = -2
    elseif holder ~= token then
      code = -6
    end
  end
  -- Numbers given to redis.call are formatted with printf; the count goes as text.
  if code == 0 and redis.call("LREM", k.active, "-1", jobId) == 0 then
    code = -3
  end
  codes[i + 1] = code
  if code == 0 then
    done[#done + 1] = jobId
    if token ~= "0" then
      doneLocks[#doneLocks + 1] = lockKeys[i + 1]
    end
    doneArg[#doneArg + 1] = a
    doneKey[#doneKey + 1] = jobKey
  end
end

local fetching = ARGV[fetchFlag] == "1"
local meta = nil
if #done > 0 then
  -- When a fetch follows, one read of meta serves both.
  if fetching then
    meta = redis.call("HMGET", k.meta, "paused", "concurrency", "max", "duration",
      "opts.maxLenEvents")
    maxEvents = meta[5] or ARGV[2]
  else
    maxEvents = bp_max_events(k.meta, ARGV[2])
  end
  redis.call("XTRIM", k.events, "MAXLEN", "~", maxEvents)
  if #doneLocks > 0 then
    redis.call("DEL", unpack(doneLocks))
  end
  redis.call("SREM", KEYS[10], unpack(done))
end

local kept = {}
local lastCount, lastAge, lastLimit
for j, a in ipairs(doneArg) do
  local jobId, jobKey = ARGV[a], doneKey[j]
  local value = ARGV[a + 2]
  local deid = ARGV[a + 7]
  if deid ~= "" then
    local dedupKey = prefix .. "de:" .. deid
    local pttl = redis.call("PTTL", dedupKey)
    if pttl == 0 or (pttl == -1 and redis.call("GET", dedupKey) == jobId) then
      redis.call("DEL", dedupKey)
    end
    if redis.call("EXISTS", prefix .. "dn:" .. deid) == 1 then
      bp_create_stored_job(k, prefix, deid, now, maxEvents)
    end
  end
  local count, age, limit = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  if count == "0" then
    bp_delete_job_keys(jobKey)
  else
    kept[#kept + 1] = nowText
    kept[#kept + 1] = jobId
    redis.call("HSET", jobKey, "returnvalue", value, "finishedOn", nowText, "atm", ARGV[a + 6])
    -- Jobs of one call mostly share their retention: parse a setting once per change.
    if count ~= lastCount or age ~= lastAge or limit ~= lastLimit then
      lastCount, lastAge, lastLimit = count, age, limit
      local pass = count .. "|" .. age .. "|" .. limit
      if not passes[pass] then
        passes[pass] = { tonumber(count) or -1, tonumber(age), tonumber(limit) or 1000 }
        passOrder[#passOrder + 1] = pass
      end
    end
  end
  redis.call("XADD", k.events, "*", "event", "completed", "jobId", jobId, "returnvalue", value,
    "prev", "active")
end
if #kept > 0 then
  redis.call("ZADD", completedKey, unpack(kept))
end

local function prune(ids)
  for _, old in ipairs(ids) do
    bp_delete_job_keys(prefix .. old)
  end
  if #ids > 0 then
    redis.call("ZREM", completedKey, unpack(ids))
  end
end
for _, name in ipairs(passOrder) do
  local keepCount, age, limit = unpack(passes[name])
  if age and limit > 0 then
    prune(redis.call("ZRANGEBYSCORE", completedKey, 0, now - age * 1000, "LIMIT", 0, limit))
  end
  if keepCount > 0 then
    local older = redis.call("ZREVRANGE", completedKey, keepCount, -1)
    for i = 1, #older, 5000 do
      prune({ unpack(older, i, math.min(i + 4999, #older)) })
    end
  end
end

-- One flat reply: the codes, then the fetch reply (its header at codes + 1).
if fetching then
  bp_fetch(k, prefix, f, codes, meta)
else
  codes[n + 1], codes[n + 2], codes[n + 3] = 0, "", 0
end
if maxEvents and #codes == n + 3 and codes[n + 1] == 0 and codes[n + 2] == ""
  and codes[n + 3] == 0 and redis.call("LLEN", k.wait) == 0
  and redis.call("LLEN", k.active) == 0 and redis.call("ZCARD", k.prioritized) == 0 then
  redis.call("XADD", k.events, "*", "event", "drained")
end
return codes
