-- One replica says it is alive, and learns how many are.
-- KEYS[1]: the members' sorted set (member: replica id, score: when its
-- membership lapses, in Redis's clock). ARGV: replica id, lapse ms.
local key = KEYS[1]
local lapse_ms = tonumber(ARGV[2])
-- A replica that stopped heartbeating (killed, partitioned) drops out.
redis.call('ZREMRANGEBYSCORE', key, '-inf', now())
redis.call('ZADD', key, now() + lapse_ms, ARGV[1])
redis.call('PEXPIRE', key, lapse_ms * 2)
return redis.call('ZCARD', key)
