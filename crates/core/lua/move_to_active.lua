--[[
  move_to_active: a worker's fetch. Promotes due delayed jobs (at most 1000), then activates
  up to one job per token: wait first (rightmost element), then prioritized (lowest score).
  Honours meta.paused, meta.concurrency and the rate limiter (meta.max wins over the worker's
  max, the worker's duration over meta.duration; activations of jobs carrying `defa` are not
  counted). Each activated job gets `<job>:lock` = its token with PX lock duration (no lock
  for token "0"), processedOn, pb (when a worker name is given), ats + 1 and an
  `active(prev=waiting)` event; the marker "0" is re-added after taking any job.

  KEYS:
    1 wait        2 active      3 prioritized 4 events      5 limiter
    6 delayed     7 meta        8 pc          9 marker
  ARGV:
    1 key prefix of the queue, with its trailing colon ("bull:q:")
    2 now (ms)
    3 lock duration (ms, > 0)
    4 limiter max or ""
    5 limiter duration (ms) or ""
    6 worker name or ""
    7.. one lock token per job wanted
  Reply: {rateLimitTtlMs, nextDelayedScore, pausedOrMaxed, {jobId, token, {field, value, ...}}, ...}
    rateLimitTtlMs > 0 when the limiter stopped the fetch; nextDelayedScore is the raw score
    text of the earliest delayed job when the fetch ran out of ready jobs (else ""); due time =
    score / 4096. pausedOrMaxed is 1 when the fetch stopped because the queue is paused or at
    its global concurrency.
]]
local k = { wait = KEYS[1], active = KEYS[2], prioritized = KEYS[3], events = KEYS[4],
  limiter = KEYS[5], delayed = KEYS[6], meta = KEYS[7], pc = KEYS[8], marker = KEYS[9] }
return bp_fetch(k, ARGV[1], bp_fetch_args(2))
