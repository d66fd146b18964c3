-- The attempt's replica is alive and still waiting for kie.ai: push its
-- lease on. Only while the key is still this attempt's and in flight.
-- KEYS[1]: the request_id's hash. ARGV: attempt id, lease ms, TTL ms.
local key = KEYS[1]
local h = redis.call('HMGET', key, 'st', 'at')
if h[1] ~= 'inflight' or h[2] ~= ARGV[1] then
  return 0
end
local lease_ms = tonumber(ARGV[2])
redis.call('HSET', key, 'lease', now() + lease_ms)
redis.call('PEXPIRE', key, lease_ms + tonumber(ARGV[3]))
return 1
