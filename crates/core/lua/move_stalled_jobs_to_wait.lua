--[[
  move_stalled_jobs_to_wait: the stall check shared by every worker of the queue (Node's and
  ours), at most once per interval thanks to the `stalled-check` mutex.

  1. SET stalled-check now PX interval NX; when it is held, reply {} at once.
  2. Events pre-trimmed (XTRIM MAXLEN ~ meta.opts.maxLenEvents).
  3. Every id that was in `stalled` (active at the previous check; the set is then deleted):
     legacy "0:" ids are removed from active; an id whose lock exists is skipped; an id no
     longer in active is skipped; an id without a job hash is only removed from active.
     Otherwise: stc + 1; when stc > max stalled count and the job is not a job scheduler's
     (its rjk names an existing `repeat:<rjk>` hash or a member of `repeat`), `defa` = "job
     stalled more than allowable limit"; RPUSH wait (next to run, priority ignored);
     `waiting(jobId, prev=active)` then `stalled(jobId)`. Marker "0" once, unless paused or
     maxed.
  4. Every id now in active is added to `stalled` (in batches of 7000).

  KEYS:
    1 stalled     2 wait        3 active      4 stalled-check
    5 meta        6 marker      7 events      8 repeat
  ARGV:
    1 key prefix of the queue, with its trailing colon ("bull:q:")
    2 max stalled count
    3 now (ms)
    4 stalled interval (ms, > 0)
    5 default maxLenEvents
  Reply: the ids moved back to wait
]]
local prefix = ARGV[1]
local maxStalled = tonumber(ARGV[2]) or 1

if not redis.call("SET", KEYS[4], ARGV[3], "PX", ARGV[4], "NX") then
  return {}
end
redis.call("XTRIM", KEYS[7], "MAXLEN", "~", bp_max_events(KEYS[5], ARGV[5]))

local recovered = {}
local stalled = redis.call("SMEMBERS", KEYS[1])
if #stalled > 0 then
  redis.call("DEL", KEYS[1])
  for _, jobId in ipairs(stalled) do
    local jobKey = prefix .. jobId
    if string.sub(jobId, 1, 2) == "0:" then
      redis.call("LREM", KEYS[3], 1, jobId)
    elseif redis.call("EXISTS", jobKey .. ":lock") == 0
      and redis.call("LREM", KEYS[3], 1, jobId) > 0
      and redis.call("EXISTS", jobKey) == 1 then
      local stc = redis.call("HINCRBY", jobKey, "stc", 1)
      if stc > maxStalled then
        local rjk = redis.call("HGET", jobKey, "rjk")
        local scheduled = rjk and (redis.call("EXISTS", prefix .. "repeat:" .. rjk) == 1
          or redis.call("ZSCORE", KEYS[8], rjk) ~= false)
        if not scheduled then
          redis.call("HSET", jobKey, "defa", "job stalled more than allowable limit")
        end
      end
      redis.call("RPUSH", KEYS[2], jobId)
      redis.call("XADD", KEYS[7], "*", "event", "waiting", "jobId", jobId, "prev", "active")
      redis.call("XADD", KEYS[7], "*", "event", "stalled", "jobId", jobId)
      recovered[#recovered + 1] = jobId
    end
  end
  if #recovered > 0 and not bp_paused_or_maxed(KEYS[5], KEYS[3]) then
    redis.call("ZADD", KEYS[6], 0, "0")
  end
end

local active = redis.call("LRANGE", KEYS[3], 0, -1)
for i = 1, #active, 7000 do
  redis.call("SADD", KEYS[1], unpack(active, i, math.min(i + 6999, #active)))
end
return recovered
