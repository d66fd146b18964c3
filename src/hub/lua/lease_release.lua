-- Hand the lease back, only if it is still this replica's (it may have
-- lapsed and been taken over).
-- KEYS[1]: the lease. ARGV: owner id.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
