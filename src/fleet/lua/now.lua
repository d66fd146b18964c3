-- Redis's clock, in milliseconds: every replica judges leases by the same
-- clock, whatever its own says.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
