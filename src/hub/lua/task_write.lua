-- Write a task's latest state, only forward: WAITING(1) < QUEUING(2) <
-- GENERATING(3) < SUCCEEDED(4) | FAILED(5), and nothing after a terminal
-- state. A stale writer (a lease holder that lost its lease, a GetTask that
-- read before the poller) can never move the shared state back.
-- KEYS[1]: the task's hash. ARGV: rank (1..5; 0 unknown), task bytes,
-- TTL ms.
-- Returns {2 if the state moved on | 1 if the same state was refreshed |
-- 0 if refused, the stored task bytes}.
local key = KEYS[1]
local rank, bytes, ttl_ms = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local h = redis.call('HMGET', key, 'rank', 'task')
local current = tonumber(h[1])
if current ~= nil then
  local terminal = current >= 4
  if terminal or rank < current then
    return {0, h[2]}
  end
end
redis.call('HSET', key, 'rank', rank, 'task', bytes)
redis.call('PEXPIRE', key, ttl_ms)
if current == rank then
  return {1, bytes}
end
return {2, bytes}
