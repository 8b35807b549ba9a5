--[[
  move_to_finished: completes or finally fails an active job, then optionally fetches the
  next jobs like move_to_active.

  Checked before anything is written: the job exists (-1); when completing, it has no pending
  children (-4) and no failed children (-9); the lock (unless token "0") exists (-2) and holds
  the token (-6); the job is in active (-3; the check is the LREM that takes it out).

  Then: lock released (DEL, SREM stalled), `stacktrace` stored (failed), events
  pre-trimmed (XTRIM MAXLEN ~ meta.opts.maxLenEvents), deduplication key released (no TTL and
  still this job's, or PTTL 0) and the keepLastIfActive hand-over (the job stored in
  `dn:<id>` is created, with its `added`/`waiting`|`delayed` events), atm + 1, retention,
  `completed(jobId, returnvalue, prev=active)` or `failed(jobId, failedReason, prev=active)`
  then `retries-exhausted(jobId, attemptsMade)` when atm >= attempts. Finally the fetch when
  asked; `drained` when nothing was fetched nor reported (no rate limit, pause or delayed job)
  and wait, active and prioritized are all empty. Parent (flow) bookkeeping is not done here.

  Retention: count 0 deletes the job (hash and sub-keys, not its deduplication key);
  otherwise the job is added to the target set with score now and gets finishedOn and
  returnvalue/failedReason (`defa` removed when failed); then, if an age is given, finished
  jobs with score <= now - age * 1000 are deleted (at most `limit` per call), and with
  count > 0 only the newest `count` are kept.

  KEYS:
    1 wait        2 active      3 prioritized 4 events      5 limiter
    6 delayed     7 meta        8 pc          9 marker      10 stalled
    11 target set (completed or failed)       12 job hash   13 job lock   14 id
  ARGV:
    1 key prefix of the queue, with its trailing colon ("bull:q:")
    2 job id
    3 token
    4 "completed" or "failed"
    5 return value JSON (completed) or failed reason (failed)
    6 stacktrace JSON array text or "" (failed)
    7 attempts (the job's opts.attempts)
    8 keep count (-1 keep all, 0 delete, n keep newest n)
    9 keep age in seconds or ""
    10 keep limit per call
    11 default maxLenEvents
    12 "1" to fetch next jobs, else "0"
    13.. the fetch arguments of move_to_active from its ARGV[2] on: now, lock duration,
       limiter max or "", limiter duration or "", worker name or "", tokens...
       (now is always given; it is the finish time)
  Reply: a negative code, or the fetch reply of move_to_active (empty when no fetch was asked)
]]
local prefix = ARGV[1]
local jobId = ARGV[2]
local token = ARGV[3]
local target = ARGV[4]
local value = ARGV[5]
local jobKey = KEYS[12]
local f = bp_fetch_args(13)
local now = f.now
local nowText = f.nowText

if redis.call("EXISTS", jobKey) == 0 then
  return -1
end
if target == "completed" then
  if redis.call("SCARD", jobKey .. ":dependencies") > 0 then
    return -4
  end
  if redis.call("ZCARD", jobKey .. ":unsuccessful") > 0 then
    return -9
  end
end
local lockCode = bp_check_lock(KEYS[13], token)
if lockCode ~= 0 then
  return lockCode
end
-- The last check removes the job from active when it is there (nothing written otherwise).
if redis.call("LREM", KEYS[2], -1, jobId) == 0 then
  return -3
end

bp_release_lock(KEYS[13], KEYS[10], jobId, token)
if target == "failed" and ARGV[6] ~= "" then
  redis.call("HSET", jobKey, "stacktrace", ARGV[6])
end
local maxEvents = bp_max_events(KEYS[7], ARGV[11])
redis.call("XTRIM", KEYS[4], "MAXLEN", "~", maxEvents)

local k = { wait = KEYS[1], active = KEYS[2], prioritized = KEYS[3], events = KEYS[4],
  limiter = KEYS[5], delayed = KEYS[6], meta = KEYS[7], pc = KEYS[8], marker = KEYS[9],
  id = KEYS[14] }

local deid = redis.call("HGET", jobKey, "deid")
if deid then
  local dedupKey = prefix .. "de:" .. deid
  local pttl = redis.call("PTTL", dedupKey)
  if pttl == 0 or (pttl == -1 and redis.call("GET", dedupKey) == jobId) then
    redis.call("DEL", dedupKey)
  end
  if redis.call("EXISTS", prefix .. "dn:" .. deid) == 1 then
    bp_create_stored_job(k, prefix, deid, now, maxEvents)
  end
end

local atm = redis.call("HINCRBY", jobKey, "atm", 1)

local prop = "returnvalue"
if target == "failed" then
  prop = "failedReason"
end
local keepCount = tonumber(ARGV[8]) or -1
if keepCount == 0 then
  bp_delete_job_keys(jobKey)
else
  redis.call("ZADD", KEYS[11], nowText, jobId)
  redis.call("HSET", jobKey, prop, value, "finishedOn", nowText)
  if target == "failed" then
    redis.call("HDEL", jobKey, "defa")
  end
  local function prune(ids)
    for _, old in ipairs(ids) do
      bp_delete_job_keys(prefix .. old)
    end
    if #ids > 0 then
      redis.call("ZREM", KEYS[11], unpack(ids))
    end
  end
  local age = tonumber(ARGV[9])
  if age then
    local limit = tonumber(ARGV[10]) or 1000
    if limit > 0 then
      prune(redis.call("ZRANGEBYSCORE", KEYS[11], 0, now - age * 1000, "LIMIT", 0, limit))
    end
  end
  if keepCount > 0 then
    local older = redis.call("ZREVRANGE", KEYS[11], keepCount, -1)
    for i = 1, #older, 5000 do
      prune({ unpack(older, i, math.min(i + 4999, #older)) })
    end
  end
end

redis.call("XADD", KEYS[4], "*", "event", target, "jobId", jobId, prop, value, "prev", "active")
if target == "failed" and atm >= (tonumber(ARGV[7]) or 0) then
  redis.call("XADD", KEYS[4], "*", "event", "retries-exhausted", "jobId", jobId,
    "attemptsMade", atm)
end

local reply = { 0, "", 0 }
if ARGV[12] == "1" then
  reply = bp_fetch(k, prefix, f)
end
if #reply == 3 and reply[1] == 0 and reply[2] == "" and reply[3] == 0
  and redis.call("LLEN", KEYS[1]) == 0 and redis.call("LLEN", KEYS[2]) == 0
  and redis.call("ZCARD", KEYS[3]) == 0 then
  redis.call("XADD", KEYS[4], "*", "event", "drained")
end
return reply
