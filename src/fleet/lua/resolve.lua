-- kie.ai's callback named the task of an unknown outcome: remember it for
-- the TTL from now. Only an unknown outcome is resolved.
-- KEYS[1]: the request_id's hash. ARGV: task id, TTL ms.
local key = KEYS[1]
if redis.call('HGET', key, 'st') ~= 'unknown' then
  return 0
end
redis.call('HDEL', key, 'unk', 'until', 'lapsed')
redis.call('HSET', key, 'st', 'done', 'task', ARGV[1])
redis.call('PEXPIRE', key, ARGV[2])
return 1
