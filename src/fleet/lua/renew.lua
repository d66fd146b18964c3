-- The attempt's replica is alive and still waiting for kie.ai: push its
-- lease (the key's expiry, see reserve.lua) on. Only while the key is still
-- this attempt's and in flight.
-- KEYS[1]: the request_id's hash. ARGV: attempt id, lease + TTL ms.
local key = KEYS[1]
local h = redis.call('HMGET', key, 'st', 'at')
if h[1] ~= 'inflight' or h[2] ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', key, ARGV[2])
return 1
