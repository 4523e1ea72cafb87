-- admission: GCRA token buckets, one decision per key in KEYS, all at Redis's own TIME.
-- ARGV[1] = emission interval in microseconds, ARGV[2] = capacity in tokens,
-- ARGV[2 + i] = cost of the decision for KEYS[i].
-- Returns, per key, four integers: allowed (1/0), remaining tokens,
-- retry-after in microseconds (-1: the cost exceeds the capacity), reset-after in microseconds.
-- The arithmetic is admission.bucket.Bucket.decide; the contract tests hold both to it.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local limit = interval * capacity
local out = {}
for i, key in ipairs(KEYS) do
  local cost = tonumber(ARGV[2 + i])
  local tat = tonumber(redis.call('GET', key))
  local base = now
  if tat ~= nil and tat > now then base = tat end
  local new_tat = base + cost * interval
  local allowed = 0
  local retry = 0
  local held = base
  if cost > capacity then
    retry = -1
  elseif new_tat - now <= limit + 0.001 then
    allowed = 1
    held = new_tat
    if cost > 0 then
      -- The key expires exactly when its bucket is full again: a full bucket is no entry.
      redis.call('SET', key, string.format('%.0f', new_tat), 'PX',
        math.max(1, math.ceil((new_tat - now) / 1000)))
    end
  else
    retry = math.ceil(new_tat - limit - now)
  end
  local remaining = math.floor((limit - (held - now)) / interval + 0.000001)
  if remaining < 0 then remaining = 0 end
  if remaining > capacity then remaining = capacity end
  out[#out + 1] = allowed
  out[#out + 1] = remaining
  out[#out + 1] = retry
  out[#out + 1] = math.ceil(held - now)
end
return out
