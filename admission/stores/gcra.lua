-- admission: GCRA token buckets, one decision per key in KEYS, all at Redis's own TIME.
-- ARGV[1] = emission interval in microseconds, ARGV[2] = capacity in tokens,
-- ARGV[2 + i] = cost of the decision for KEYS[i].
-- A key holds its bucket's TAT, a whole number of microseconds, and expires once the bucket is
-- full again (a full bucket is no entry). Per key the reply is one integer: how far the TAT
-- was ahead of now, in microseconds, when the decision found it (an exact integer, since TATs
-- and now are); the same number as -1 - n when refused. The caller derives remaining,
-- retry-after and reset-after from it with the same arithmetic (admission.bucket.Bucket.outcome),
-- and the contract tests hold both stores to it. One key: the reply is that integer alone.
-- Lean on purpose, as the server runs it for every request: TIME, GET and (when admitted) one
-- SET per key, numbers passed to redis.call as numbers, no string.format.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local limit = interval * capacity + 0.001
local n = #KEYS
local out
if n > 1 then out = {} end
for i = 1, n do
  local key = KEYS[i]
  local cost = tonumber(ARGV[2 + i])
  local base = tonumber(redis.call('GET', key)) or now
  if base < now then base = now end
  local tat = base + cost * interval
  local ahead
  if cost <= capacity and tat - now <= limit then
    if cost > 0 then
      tat = math.floor(tat + 0.5)
      -- Whole milliseconds, rounded up and then some: never before the bucket is full.
      redis.call('SET', key, tat, 'PX', math.floor((tat - now) / 1000) + 1)
    end
    ahead = base - now
  else
    ahead = now - base - 1
  end
  -- One key (a lone caller): the integer alone, and no table for the collector to sweep.
  if n == 1 then return ahead end
  out[i] = ahead
end
return out
