-- Reserve the earliest createTask start that keeps at most `limit` starts in
-- any window of `window` ms, fleet-wide: the single-process gate's
-- reserving sliding window, with Redis's clock for every replica.
-- KEYS[1]: the sorted set of reserved starts (score: start ms, possibly in
-- the future). ARGV: limit, window ms, longest wait ms, member (unique).
-- Returns {1, wait ms} when reserved, {0, wait ms} when the wait would be
-- longer than the caller may wait (nothing reserved).
local key = KEYS[1]
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local longest = tonumber(ARGV[3])
-- Starts a whole window ago no longer count.
redis.call('ZREMRANGEBYSCORE', key, '-inf', now() - window)
local n = redis.call('ZCARD', key)
local start = now()
if n >= limit then
  -- The limit-th latest start bounds the next one: a window after it.
  local bound = redis.call('ZRANGE', key, n - limit, n - limit, 'WITHSCORES')
  start = math.max(tonumber(bound[2]) + window, now())
end
local wait = start - now()
if wait > longest then
  return {0, wait}
end
redis.call('ZADD', key, start, ARGV[4])
-- Kept until its last start has left the window.
redis.call('PEXPIRE', key, wait + window + 1000)
return {1, wait}
