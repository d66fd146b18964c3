-- One caller's quota counters, in one hash (KEYS[1]), in Redis's clock:
-- fixed windows, the minute and the UTC day of `now`, each counter reset
-- when its window has passed. The same rules as quota.rs's `Usage`.
-- ARGV[1]: reserve | release | settle | read.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local MINUTE, DAY = 60000, 86400000
local minute, day = math.floor(now / MINUTE), math.floor(now / DAY)
local h = redis.call('HMGET', KEYS[1], 'mw', 'mn', 'dw', 'dn', 'c')
local mw, mn = tonumber(h[1]) or minute, tonumber(h[2]) or 0
local dw, dn, c = tonumber(h[3]) or day, tonumber(h[4]) or 0, tonumber(h[5]) or 0
if mw ~= minute then mw, mn = minute, 0 end
if dw ~= day then dw, dn, c = day, 0, 0 end
local op = ARGV[1]
local function save()
  redis.call('HSET', KEYS[1], 'mw', mw, 'mn', mn, 'dw', dw, 'dn', dn, 'c', tostring(c))
  redis.call('PEXPIRE', KEYS[1], 2 * DAY)
end
if op == 'reserve' then
  local lm, ld, lc, price = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  if lm >= 0 and mn + 1 > lm then return {'1', tostring((minute + 1) * MINUTE - now)} end
  if ld >= 0 and dn + 1 > ld then return {'2', tostring((day + 1) * DAY - now)} end
  if lc >= 0 and c + price > lc then return {'3', tostring((day + 1) * DAY - now)} end
  mn, dn, c = mn + 1, dn + 1, c + price
  save()
  return {'0', tostring(minute), tostring(day)}
elseif op == 'release' then
  -- Only within the windows the hold was taken in.
  if tonumber(ARGV[2]) == minute then mn = math.max(mn - 1, 0) end
  if tonumber(ARGV[3]) == day then
    dn = math.max(dn - 1, 0)
    c = math.max(c - tonumber(ARGV[4]), 0)
  end
  save()
  return {'0'}
elseif op == 'settle' then
  if tonumber(ARGV[2]) == day then c = math.max(c + tonumber(ARGV[3]), 0) end
  save()
  return {'0'}
end
return {tostring(now), tostring(mn), tostring(dn), tostring(c)}
