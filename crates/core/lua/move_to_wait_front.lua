--[[
  move_to_wait_front: puts an active job back at the front of the line without counting an
  attempt (its processor was rate limited, or the worker hands it back at shutdown).

  Checked before anything is written: the job exists (-1); the lock (unless token "0")
  exists (-2) and holds the token (-6); the job is in active (-3).

  Then: lock released (DEL, SREM stalled), LREM active; priority > 0 → prioritized with score
  priority * 2^32 (front of its priority, no marker), else RPUSH wait (next to run) and marker
  "0" unless paused or maxed; `waiting(jobId, prev=active)`.

  KEYS:
    1 active      2 wait        3 prioritized 4 stalled     5 meta
    6 limiter     7 marker      8 events      9 job hash    10 job lock
  ARGV:
    1 job id
    2 token
    3 default maxLenEvents
  Reply: the limiter's PTTL when > 0, else 0; or -1, -2, -3, -6
]]
local jobId = ARGV[1]
local token = ARGV[2]
local jobKey = KEYS[9]

local code = bp_check_active(jobKey, KEYS[10], KEYS[1], jobId, token)
if code ~= 0 then
  return code
end

bp_release_lock(KEYS[10], KEYS[4], jobId, token)
redis.call("LREM", KEYS[1], 1, jobId)
local priority = tonumber(redis.call("HGET", jobKey, "priority")) or 0
if priority > 0 then
  redis.call("ZADD", KEYS[3], priority * 4294967296, jobId)
else
  redis.call("RPUSH", KEYS[2], jobId)
  if not bp_paused_or_maxed(KEYS[5], KEYS[1]) then
    redis.call("ZADD", KEYS[7], 0, "0")
  end
end
redis.call("XADD", KEYS[8], "MAXLEN", "~", bp_max_events(KEYS[5], ARGV[3]), "*", "event", "waiting",
  "jobId", jobId, "prev", "active")
local ttl = redis.call("PTTL", KEYS[6])
if ttl > 0 then
  return ttl
end
return 0
