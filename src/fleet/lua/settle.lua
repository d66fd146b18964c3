-- Record how an attempt ended. Only the attempt's own settlement counts, and
-- it also corrects the guess made when its lease lapsed.
-- KEYS[1]: the request_id's hash. ARGV: attempt id, kind (created | failed |
-- unknown), payload (task id | error | unknown outcome), TTL ms, ms during
-- which the callback may still name the task (0: never), ms a failure is
-- kept for the attempt's waiters, the request's fingerprint.
local key = KEYS[1]
local attempt, kind, payload = ARGV[1], ARGV[2], ARGV[3]
local h = redis.call('HMGET', key, 'st', 'at', 'lapsed')
if not h[1] and kind ~= 'failed' then
  -- Redis lost the key while the attempt was out (restarted empty): record
  -- the outcome all the same, or a retry would find the key free and create
  -- a second task. A failure leaves it free, as it would anyway.
  redis.call('HSET', key, 'st', 'inflight', 'fp', ARGV[7], 'at', attempt)
  h = {'inflight', attempt, false}
end
if h[2] ~= attempt then
  return 0
end
-- In flight, the hash holds only st, fp, at and ttl: nothing to clear.
if h[1] == 'unknown' and h[3] == '1' then
  redis.call('HDEL', key, 'unk', 'lapsed')
elseif h[1] ~= 'inflight' then
  return 0
end
if kind == 'created' then
  redis.call('HSET', key, 'st', 'done', 'task', payload)
  redis.call('PEXPIRE', key, ARGV[4])
elseif kind == 'failed' then
  redis.call('HSET', key, 'st', 'failed', 'err', payload)
  redis.call('PEXPIRE', key, ARGV[6])
else
  local learn_ms = tonumber(ARGV[5])
  if learn_ms > 0 then
    redis.call('HSET', key, 'st', 'unknown', 'unk', payload, 'until', now() + learn_ms)
  else
    redis.call('HSET', key, 'st', 'unknown', 'unk', payload)
  end
  redis.call('PEXPIRE', key, ARGV[4])
end
return 1
