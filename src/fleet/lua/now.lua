-- Redis's clock, in milliseconds: every replica judges leases by the same
-- clock, whatever its own says. Read once, on first use: a script whose
-- path needs no clock (most settles) saves the TIME call.
local now_ms
local function now()
  if not now_ms then
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now_ms
end
