-- The attempt's replica is alive and still waiting for kie.ai: push its
-- lease (the key's expiry, see reserve.lua) on. Only while the key is still
-- this attempt's and in flight.
-- KEYS[1]: the request_id's hash. ARGV: attempt id, lease + TTL ms,
-- fingerprint, TTL ms.
local key = KEYS[1]
local h = redis.call('HMGET', key, 'st', 'at')
if not h[1] then
  -- Redis lost the key (restarted empty, or failed over to a replica that
  -- never had it) while the attempt is in flight: claim it again, or a
  -- retry would find it free and create a second task.
  redis.call('HSET', key, 'st', 'inflight', 'fp', ARGV[3], 'at', ARGV[1], 'ttl', ARGV[4])
  redis.call('PEXPIRE', key, ARGV[2])
  return 1
end
if h[1] ~= 'inflight' or h[2] ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', key, ARGV[2])
return 1
