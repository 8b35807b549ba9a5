--[[
  retry_job: a failed attempt that will run again, now or after a delay.

  Checked before anything is written: the job exists (-1); the lock (unless token "0")
  exists (-2) and holds the token (-6); the job is in active (-3).

  Then: lock released (DEL, SREM stalled), failedReason and stacktrace stored when given,
  LREM active, atm + 1 when counting the attempt.
  * delay > 0: into delayed with the score of due = now + delay (due * 4096 + sequence),
    `delay` field = the delay, `delayed(jobId, delay=due)`, marker "1" at the earliest due.
  * delay 0: due delayed jobs are promoted first (as in a fetch); then wait (LPUSH, RPUSH when
    lifo) or prioritized (fresh score) when the job has a priority, marker "0" unless paused
    or maxed, `waiting(jobId, prev=active)`.

  KEYS:
    1 active      2 wait        3 prioritized 4 delayed     5 pc
    6 marker      7 meta        8 events      9 stalled     10 job hash
    11 job lock
  ARGV:
    1 key prefix of the queue, with its trailing colon ("bull:q:")
    2 job id
    3 token
    4 now (ms)
    5 delay (ms)
    6 "1" when the job is LIFO
    7 "1" to count the attempt (atm + 1)
    8 "1" to store failedReason and stacktrace
    9 failed reason
    10 stacktrace JSON array text
    11 default maxLenEvents
  Reply: 0, or -1, -2, -3, -6
]]
local prefix = ARGV[1]
local jobId = ARGV[2]
local token = ARGV[3]
local now = tonumber(ARGV[4])
local delay = tonumber(ARGV[5]) or 0
local jobKey = KEYS[10]

local code = bp_check_active(jobKey, KEYS[11], KEYS[1], jobId, token)
if code ~= 0 then
  return code
end

bp_release_lock(KEYS[11], KEYS[9], jobId, token)
if ARGV[8] == "1" then
  redis.call("HSET", jobKey, "failedReason", ARGV[9], "stacktrace", ARGV[10])
end
redis.call("LREM", KEYS[1], -1, jobId)
if ARGV[7] == "1" then
  redis.call("HINCRBY", jobKey, "atm", 1)
end
local maxEvents = bp_max_events(KEYS[7], ARGV[11])

if delay > 0 then
  local due = now + delay
  redis.call("ZADD", KEYS[4], bp_delayed_score(KEYS[4], due), jobId)
  redis.call("HSET", jobKey, "delay", ARGV[5])
  redis.call("XADD", KEYS[8], "MAXLEN", "~", maxEvents, "*", "event", "delayed", "jobId", jobId,
    "delay", due)
  bp_mark_earliest_delayed(KEYS[4], KEYS[6])
else
  local k = { wait = KEYS[2], active = KEYS[1], prioritized = KEYS[3], delayed = KEYS[4],
    pc = KEYS[5], marker = KEYS[6], meta = KEYS[7], events = KEYS[8] }
  bp_promote_due(k, prefix, now, bp_paused_or_maxed(KEYS[7], KEYS[1]))
  local priority = tonumber(redis.call("HGET", jobKey, "priority")) or 0
  bp_enqueue(k, jobId, priority, ARGV[6] == "1")
  redis.call("XADD", KEYS[8], "MAXLEN", "~", maxEvents, "*", "event", "waiting", "jobId", jobId,
    "prev", "active")
end
return 0
