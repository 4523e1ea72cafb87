-- admission: one request's charges against several GCRA buckets, all or nothing, at Redis's TIME.
-- KEYS[i] is a bucket; ARGV[5i-4..5i] = its emission interval in microseconds, its capacity in
-- tokens, the request's cost in it, its group (0: enforced; n > 0: shadow policy n), and 1 for
-- a peek (a policy's charge_when: the bucket must hold the cost, but nothing is taken), else 0.
-- A group admits when every bucket in it admits; a group's tokens are taken only when it and
-- group 0 both admit. A refused request takes nothing from any bucket; a peek never takes, and
-- reports what its bucket would hold were it charged (charge.lua charges it after the response).
-- Returns, per key, four integers: allowed by that bucket (1/0), remaining tokens after the
-- request, retry-after in microseconds (-1: the cost exceeds the capacity), reset-after in
-- microseconds. The arithmetic is admission.charges.decide_charges; the contract tests hold
-- both to it.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local base, new_tat, allowed, retry = {}, {}, {}, {}
local refused = {}
for i = 1, n do
  local interval = tonumber(ARGV[5 * i - 4])
  local capacity = tonumber(ARGV[5 * i - 3])
  local cost = tonumber(ARGV[5 * i - 2])
  local limit = interval * capacity
  local tat = tonumber(redis.call('GET', KEYS[i]))
  local b = now
  if tat ~= nil and tat > now then b = tat end
  base[i] = b
  new_tat[i] = b + cost * interval
  if cost > capacity then
    allowed[i] = 0
    retry[i] = -1
  elseif new_tat[i] - now <= limit + 0.001 then
    allowed[i] = 1
    retry[i] = 0
  else
    allowed[i] = 0
    retry[i] = math.ceil(new_tat[i] - limit - now)
  end
  if allowed[i] == 0 then refused[ARGV[5 * i - 1]] = true end
end
local enforced = not refused['0']
local out = {}
for i = 1, n do
  local interval = tonumber(ARGV[5 * i - 4])
  local capacity = tonumber(ARGV[5 * i - 3])
  local cost = tonumber(ARGV[5 * i - 2])
  local held = base[i]
  if enforced and not refused[ARGV[5 * i - 1]] then
    held = new_tat[i]
    if cost > 0 and ARGV[5 * i] ~= '1' then
      -- The key expires exactly when its bucket is full again: a full bucket is no entry.
      redis.call('SET', KEYS[i], string.format('%.0f', held), 'PX',
        math.max(1, math.ceil((held - now) / 1000)))
    end
  end
  local remaining = math.floor((interval * capacity - (held - now)) / interval + 0.000001)
  if remaining < 0 then remaining = 0 end
  if remaining > capacity then remaining = capacity end
  out[#out + 1] = allowed[i]
  out[#out + 1] = remaining
  out[#out + 1] = retry[i]
  out[#out + 1] = math.ceil(held - now)
end
return out
