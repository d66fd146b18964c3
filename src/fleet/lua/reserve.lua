-- Reserve a request_id for a new attempt, or say what is known of it.
-- KEYS[1]: the request_id's hash. ARGV: fingerprint, attempt id, lease +
-- TTL ms (the expiry in flight, summed by the caller: no number formatting
-- here), TTL ms, the attempt id the caller waits for ('' if none), the unknown
-- outcome recorded when a lease lapses.
-- Fields: st (inflight | done | unknown | failed), fp, at (attempt id),
-- ttl (the attempt's TTL ms), task, err, unk, until (ms, while the callback
-- may come), lapsed ('1': unknown because its attempt's lease lapsed).
-- An attempt's lease is the key's own expiry: in flight, the key lives
-- lease + ttl, so the lease runs while more than ttl is left. No clock read
-- and no lease field on a reserve's path.
local key = KEYS[1]
local fp, attempt, waited, lapse = ARGV[1], ARGV[2], ARGV[5], ARGV[6]
local h = redis.call('HMGET', key, 'st', 'fp', 'at', 'ttl', 'task', 'err', 'unk', 'until')
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
  redis.call('HSET', key, 'st', 'inflight', 'fp', fp, 'at', attempt, 'ttl', ARGV[4])
  -- Kept well past the lease: a lapsed attempt must stay bound for the TTL.
  redis.call('PEXPIRE', key, ARGV[3])
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
  -- The attempt's own TTL, not this caller's: replicas may disagree on it.
  if redis.call('PTTL', key) > tonumber(h[4]) then
    return {'inflight', h[3]}
  end
  -- Its replica stopped renewing the lease without recording an outcome:
  -- the request may have been sent, so the key is never freed.
  redis.call('HSET', key, 'st', 'unknown', 'unk', lapse, 'lapsed', '1')
  redis.call('PEXPIRE', key, ARGV[4])
  return {'unknown', lapse, '0'}
end
local learnable = '0'
if h[8] and tonumber(h[8]) > now() then
  learnable = '1'
end
return {'unknown', h[7], learnable}
