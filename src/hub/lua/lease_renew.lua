-- The poller lease is still this replica's: push it on. Compare and extend
-- in one step, so that a lease that lapsed and was taken over is never
-- extended for the new holder by the old one.
-- KEYS[1]: the lease. ARGV: owner id, lease ms.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0
