-- A read's answer is in: its slot is held one more second, then frees.
-- KEYS[1]: the slots' sorted set. ARGV: member, lease ms.
-- XX: a slot whose lease already lapsed stays gone.
local key = KEYS[1]
redis.call('ZADD', key, 'XX', now() + 1000, ARGV[1])
redis.call('PEXPIRE', key, tonumber(ARGV[2]) + 1000)
return 1
