-- admission: charges after a response (a policy's charge_when), at Redis's TIME.
-- KEYS[i] is a bucket; ARGV[2i-1..2i] = its emission interval in microseconds and the cost to
-- take from it. Each cost is taken in full whether or not the bucket holds it: the request was
-- admitted by a peek and has been served, so its outcome is counted, and the bucket may go below
-- empty (by at most what the requests admitted before this charge cost); it is then refused
-- until paid back. The arithmetic is admission.bucket.Bucket.charge. Returns how far each TAT
-- now stands ahead of Redis's now, in microseconds.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local cost = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]))
  local held = now
  if tat ~= nil and tat > now then held = tat end
  held = held + cost * interval
  if held > now then
    -- The key expires exactly when its bucket is full again: a full bucket is no entry.
    redis.call('SET', KEYS[i], string.format('%.0f', held), 'PX',
      math.max(1, math.ceil((held - now) / 1000)))
  end
  out[i] = math.ceil(held - now)
end
return out
