-- Take one of the fleet's `limit` recordInfo slots. A slot is held until
-- its score: while the read is out, grant time + lease (in case its replica
-- never says it is answered); once answered, answer time + 1 s (see
-- read_release.lua). kie.ai sees each read between those two moments, so
-- no second of kie.ai's holds more reads than `limit`.
-- KEYS[1]: the slots' sorted set. ARGV: limit, lease ms, member (unique).
-- Returns {1, 0} when granted, else {0, ms until the first slot frees}.
local key = KEYS[1]
local limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now())
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now() + lease, ARGV[3])
  redis.call('PEXPIRE', key, lease + 1000)
  return {1, 0}
end
local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {0, tonumber(first[2]) - now()}
