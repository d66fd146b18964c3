-- Reserve a request_id for a new attempt, or say what is known of it.
-- KEYS[1]: the request_id's hash. ARGV: fingerprint, attempt id, lease ms,
-- TTL ms, the attempt id the caller waits for ('' if none), the unknown
-- outcome recorded when a lease lapses.
-- Fields: st (inflight | done | unknown | failed), fp, at (attempt id),
-- lease (ms), task, err, unk, until (ms, while the callback may come),
-- lapsed ('1': unknown because its attempt's lease lapsed).
local key = KEYS[1]
local fp, attempt, waited, lapse = ARGV[1], ARGV[2], ARGV[5], ARGV[6]
local lease_ms, ttl_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local h = redis.call('HMGET', key, 'st', 'fp', 'at', 'lease', 'task', 'err', 'unk', 'until')
local st = h[1]
-- A certain failure is only for those who waited for that attempt; for
-- everyone else the key is free again.
if st == 'failed' and h[3] == waited then
  return {'failed', h[6]}
end
if not st or st == 'failed' then
  if st then
    redis.call('DEL', key)
  end
  redis.call('HSET', key, 'st', 'inflight', 'fp', fp, 'at', attempt, 'lease', now() + lease_ms)
  -- Kept well past the lease: a lapsed attempt must stay bound for the TTL.
  redis.call('PEXPIRE', key, lease_ms + ttl_ms)
  return {'reserved'}
end
if h[2] ~= fp then
  return {'mismatch'}
end
if st == 'done' then
  return {'done', h[5]}
end
if st == 'inflight' then
  -- This very attempt's reservation, repeated because its answer was lost:
  -- still this caller's.
  if h[3] == attempt then
    return {'reserved'}
  end
  if tonumber(h[4]) >= now() then
    return {'inflight', h[3]}
  end
  -- Its replica stopped renewing the lease without recording an outcome:
  -- the request may have been sent, so the key is never freed.
  redis.call('HSET', key, 'st', 'unknown', 'unk', lapse, 'lapsed', '1')
  redis.call('HDEL', key, 'lease')
  redis.call('PEXPIRE', key, ttl_ms)
  return {'unknown', lapse, '0'}
end
local learnable = '0'
if h[8] and tonumber(h[8]) > now() then
  learnable = '1'
end
return {'unknown', h[7], learnable}
