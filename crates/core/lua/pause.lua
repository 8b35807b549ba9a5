--[[
  pause: pauses or resumes a queue.

  KEYS: 1 meta, 2 marker, 3 events, 4 wait, 5 prioritized, 6 delayed, 7 paused (legacy v5 list)
  ARGV: 1 "paused" or "resumed"
  Reply: 0

  Pause sets meta.paused and deletes the marker, so blocked workers stop being woken; jobs
  stay where they are. Resume removes meta.paused, moves any legacy v5 `paused` list into
  `wait`, and re-creates the marker: "0" if something is waiting, else "1" at the due time of
  the earliest delayed job.
]]
if ARGV[1] == "paused" then
  redis.call("HSET", KEYS[1], "paused", 1)
  redis.call("DEL", KEYS[2])
else
  redis.call("HDEL", KEYS[1], "paused")
  while redis.call("RPOPLPUSH", KEYS[7], KEYS[4]) do end
  if redis.call("LLEN", KEYS[4]) + redis.call("ZCARD", KEYS[5]) > 0 then
    redis.call("ZADD", KEYS[2], 0, "0")
  else
    local head = redis.call("ZRANGE", KEYS[6], 0, 0, "WITHSCORES")
    if head[2] then
      redis.call("ZADD", KEYS[2], tonumber(head[2]) / 4096, "1")
    end
  end
end
redis.call("XADD", KEYS[3], "*", "event", ARGV[1])
return 0
