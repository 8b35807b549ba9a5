--[[
  remove_job: removes one job that no worker holds.

  KEYS: 1 job hash, 2 job lock, 3 events, 4 meta
        5 completed, 6 waiting-children, 7 delayed, 8 failed, 9 prioritized (sorted sets)
        10 wait, 11 paused, 12 active (lists)
  ARGV: 1 job id, 2 key prefix of the queue ("bull:q:"), 3 default maxLenEvents
  Reply: 1 removed; 0 refused because the job is locked; -1 the job does not exist

  Removes the id from whichever state holds it, deletes the hash and its logs, releases the
  job's deduplication key if it still points at it, and emits removed(prev=<state>).
]]
local id = ARGV[1]
if redis.call("EXISTS", KEYS[1]) == 0 then
  return -1
end
if redis.call("EXISTS", KEYS[2]) == 1 then
  return 0
end
local prev = "unknown"
local sets = { { 5, "completed" }, { 6, "waiting-children" }, { 7, "delayed" }, { 8, "failed" },
  { 9, "prioritized" } }
for _, s in ipairs(sets) do
  if redis.call("ZREM", KEYS[s[1]], id) == 1 then
    prev = s[2]
    break
  end
end
if prev == "unknown" then
  local lists = { { 10, "wait" }, { 11, "paused" }, { 12, "active" } }
  for _, l in ipairs(lists) do
    if redis.call("LREM", KEYS[l[1]], 0, id) > 0 then
      prev = l[2]
      break
    end
  end
end
local deid = redis.call("HGET", KEYS[1], "deid")
if deid then
  local dkey = ARGV[2] .. "de:" .. deid
  if redis.call("GET", dkey) == id then
    redis.call("DEL", dkey, ARGV[2] .. "dn:" .. deid)
  end
end
redis.call("DEL", KEYS[1], KEYS[1] .. ":logs", KEYS[1] .. ":dependencies", KEYS[1] .. ":processed",
  KEYS[1] .. ":failed", KEYS[1] .. ":unsuccessful")
local maxEvents = redis.call("HGET", KEYS[4], "opts.maxLenEvents") or ARGV[3]
redis.call("XADD", KEYS[3], "MAXLEN", "~", maxEvents, "*", "event", "removed", "jobId", id, "prev", prev)
return 1
