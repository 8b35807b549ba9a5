--[[
  extend_locks: renews the locks a worker holds. For each (job id, token): when
  `<job>:lock` holds the token, it is set again with PX duration and the id leaves
  `stalled`; otherwise the id is reported.

  KEYS:
    1 stalled
  ARGV:
    1 key prefix of the queue, with its trailing colon ("bull:q:")
    2 duration (ms, > 0)
    3.. pairs: job id, token
  Reply: the ids whose lock could not be renewed (missing, or held by another token)
]]
local prefix = ARGV[1]
local duration = ARGV[2]
local failed = {}
for i = 3, #ARGV - 1, 2 do
  local jobId = ARGV[i]
  local token = ARGV[i + 1]
  local lockKey = prefix .. jobId .. ":lock"
  if redis.call("GET", lockKey) == token then
    redis.call("SET", lockKey, token, "PX", duration)
    redis.call("SREM", KEYS[1], jobId)
  else
    failed[#failed + 1] = jobId
  end
end
return failed
