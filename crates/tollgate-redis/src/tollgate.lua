-- tollgate: every rate-limit decision of one request, in one script call.
--
-- The arithmetic is the core's (crates/tollgate-core/src/algorithm/*.rs), to the nanosecond.
-- Lua 5.1 numbers are doubles, exact for integers up to 2^53, while "now" in nanoseconds since
-- the epoch is ~1.7e18. So:
--   * an absolute instant is a pair (s, n): seconds, and nanoseconds within the second;
--     it is stored as its decimal nanosecond count (the core's u64) and split at 9 digits;
--   * every computation works on differences from now, which the core bounds below 2^53
--     (period <= 2^51 ns, burst span <= 2^52 ns);
--   * divisions are floor-corrected by their remainder, `now mod period` is a mulmod by
--     doubling, and floor/ceil(a*b/c) is a binary long multiplication whose remainder stays
--     below 2c <= 2^52: no intermediate ever exceeds 2^53.
--
-- KEYS: one per rule (then the idempotency record's key, when ARGV[5] == '1').
-- ARGV: mode, now_s, now_n (both empty: Redis TIME), nrules, has_replay, replay_ttl_ns,
--       max_replays, charged_s, charged_n (refunds only), then 7 per rule:
--       algorithm (g|f|l|w), limit, period_ns, interval_ns, burst, cost, shadow (0|1).
-- Modes: c = check (charge all-or-nothing, honour replays), p = peek, z = report at cost 0
--        (a replayed request, in Cluster), u = refund a charge made at (charged_s, charged_n),
--        r = take one free replay if the record allows it, n = create the record if none is live.
-- Reply: { now_s, now_n, allowed (0|1), replayed (0|1),
--          then 4 per rule: allowed (0|1), remaining, reset_after_ns, retry_after_ns (0: none) }
-- Values (instants as decimal nanoseconds since the epoch; every key has a TTL):
--   GCRA "<tat>"; fixed window "<window end>:<count>"; sliding log "<at>:<cost>,<at>:<cost>...";
--   sliding window "<window end>:<previous>:<current>"; idempotency "<expires at>:<replays>".

local E9 = 1000000000
local TWO53 = 9007199254740992
-- Instants further apart than this (52 days) are only ever compared, never subtracted exactly.
local FAR_S = 4503599

if redis.replicate_commands then redis.replicate_commands() end

local mode = ARGV[1]
local NS, NN
-- The shortest TTL given to a key, in ms. With an explicit time (tests), keys live at least a
-- minute of real time: their state is judged by the explicit time, never by their TTL.
local MIN_TTL = 1
if ARGV[2] ~= '' then
  NS = tonumber(ARGV[2]); NN = tonumber(ARGV[3])
  MIN_TTL = 60000
else
  local t = redis.call('TIME')
  NS = tonumber(t[1]); NN = tonumber(t[2]) * 1000
end

-- floor(a / b) and a mod b for integers |a| < 2^53, b >= 1, exactly.
local function idiv(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  while r < 0 do q = q - 1; r = r + b end
  while r >= b do q = q + 1; r = r - b end
  return q, r
end

-- a mod m for 0 <= a < 2^52.
local function imod(a, m)
  local _, r = idiv(a, m)
  return r
end

-- The binary digits of an integer b >= 0, least significant first, and how many there are.
local function binary_digits(b)
  local bits, nb = {}, 0
  while b > 0 do
    local bit = b % 2
    nb = nb + 1; bits[nb] = bit
    b = (b - bit) / 2
  end
  return bits, nb
end

-- (a * b) mod m for 0 <= a, b < m <= 2^51: doubling keeps every partial sum below 2m.
local function mulmod(a, b, m)
  local bits, nb = binary_digits(b)
  local r = 0
  for i = nb, 1, -1 do
    r = r + r
    if r >= m then r = r - m end
    if bits[i] == 1 then
      r = r + a
      if r >= m then r = r - m end
    end
  end
  return r
end

-- floor(a * b / c) and whether it was inexact, for 0 <= a, b and 1 <= c, all below 2^52:
-- binary long multiplication of a by b, with the product kept as q * c + r, 0 <= r < c.
local function muldiv(a, b, c)
  local qa, ra = idiv(a, c)
  local bits, nb = binary_digits(b)
  local q, r = 0, 0
  for i = nb, 1, -1 do
    q = q + q; r = r + r
    if r >= c then r = r - c; q = q + 1 end
    if bits[i] == 1 then
      q = q + qa; r = r + ra
      if r >= c then r = r - c; q = q + 1 end
    end
  end
  return q, r > 0
end

local function muldiv_ceil(a, b, c)
  local q, inexact = muldiv(a, b, c)
  if inexact then return q + 1 end
  return q
end

-- Instant (s, n) minus now, in nanoseconds; clamped to +-2^53 when further than FAR_S seconds.
local function rel(s, n)
  local ds = s - NS
  if ds > FAR_S then return TWO53 end
  if ds < -FAR_S then return -TWO53 end
  return ds * E9 + (n - NN)
end

-- now + d nanoseconds, as (s, n); |d| <= 2^52 + 2^51.
local function at(d)
  local q, r = idiv(NN + d, E9)
  return NS + q, r
end

-- Stored instants are decimal nanosecond counts.
local function parse(str)
  local len = #str
  if len <= 9 then return 0, tonumber(str) end
  return tonumber(string.sub(str, 1, len - 9)), tonumber(string.sub(str, len - 8))
end

local function rel_str(str)
  local s, n = parse(str)
  return rel(s, n)
end

local function fmt(d)
  local s, n = at(d)
  return string.format('%d%09d', s, n)
end

-- Milliseconds of TTL for state that stops mattering `d` ns from now (rounded up, so a key
-- never expires before its state stops mattering).
local function ttl_ms(d)
  if d <= 0 then return MIN_TTL end
  local q, r = idiv(d, 1000000)
  if r > 0 then q = q + 1 end
  if q < MIN_TTL then return MIN_TTL end
  return q
end

-- The end of the window of length `period` (aligned on multiples of it since the epoch) that
-- holds the instant (s, n), relative to that instant: period - (s * 1e9 + n) mod period.
local function window_end_from(s, n, period)
  local sm = imod(s, period)
  local em = imod(E9, period)
  local r = imod(mulmod(sm, em, period) + imod(n, period), period)
  return period - r
end

local function window_end(period)
  return window_end_from(NS, NN, period)
end

-- Decisions: { allowed, remaining, reset_after, retry_after } and the value to write (or nil).
local function allow(remaining, reset) return { 1, remaining, reset, 0 } end
local function deny(remaining, reset, retry)
  if retry < 1 then retry = 1 end
  return { 0, remaining, reset, retry }
end

-- Each decide returns decision, new value, ttl (ms); the value is nil when nothing is written.

local function gcra(v, p, cost)
  local interval, burst = p.interval, p.burst
  local tolerance = burst * interval
  local used = 0
  if v then
    used = rel_str(v)
    if used < 0 then used = 0 end
  end
  local wanted = used + cost * interval
  if wanted <= tolerance then
    local remaining = idiv(tolerance - wanted, interval)
    return allow(remaining, wanted), fmt(wanted), ttl_ms(wanted)
  end
  local free = tolerance - used
  if free < 0 then free = 0 end
  return deny(idiv(free, interval), used, wanted - tolerance)
end

local function fixed_window(v, p, cost)
  local limit = p.limit
  local we, count, wes
  if v then
    local a, b = string.match(v, '^(%d+):(%d+)$')
    local d = rel_str(a)
    if d > 0 then we = d; wes = a; count = tonumber(b) end
  end
  if not we then
    we = window_end(p.period); count = 0
  end
  if count + cost <= limit then
    return allow(limit - count - cost, we), (wes or fmt(we)) .. ':' .. (count + cost), ttl_ms(we)
  end
  local remaining = limit - count
  if remaining < 0 then remaining = 0 end
  return deny(remaining, we, we)
end

local function sliding_log(v, p, cost)
  local limit, period = p.limit, p.period
  -- Entries oldest first: { instant string, relative time, cost }.
  local entries, n = {}, 0
  if v then
    for a, c in string.gmatch(v, '(%d+):(%d+)') do
      n = n + 1
      entries[n] = { a, rel_str(a), tonumber(c) }
    end
  end
  local used = 0
  local live, nl = {}, 0
  for i = 1, n do
    local e = entries[i]
    if e[2] + period > 0 then
      used = used + e[3]
      nl = nl + 1; live[nl] = e
    end
  end
  if used + cost <= limit then
    if cost > 0 then
      -- Keep the log sorted even if the clock went back; merge with an entry at now.
      local pos = nl + 1
      for i = 1, nl do
        if live[i][2] > 0 then pos = i; break end
      end
      local prev = live[pos - 1]
      if prev and prev[2] == 0 then
        prev[3] = prev[3] + cost
      else
        table.insert(live, pos, { nil, 0, cost })
        nl = nl + 1
      end
    end
    local reset = 0
    local newest = 0
    if nl > 0 then newest = live[nl][2] end
    local expires = newest + period
    if nl > 0 and expires > 0 then reset = expires end
    local parts = {}
    for i = 1, nl do
      local e = live[i]
      parts[i] = (e[1] or fmt(e[2])) .. ':' .. e[3]
    end
    return allow(limit - used - cost, reset), table.concat(parts, ','), ttl_ms(expires)
  end
  -- Wait until enough of the oldest entries have left the window.
  local excess = used + cost - limit
  local freed, retry = 0, period
  for i = 1, nl do
    freed = freed + live[i][3]
    if freed >= excess then
      retry = live[i][2] + period
      break
    end
  end
  local reset = 0
  if n > 0 then
    reset = entries[n][2] + period
    if reset < 0 then reset = 0 end
  end
  local remaining = limit - used
  if remaining < 0 then remaining = 0 end
  return deny(remaining, reset, retry)
end

-- The first instant (relative to now) at which a request of `cost` passes, if nothing else is
-- admitted first: the core's `earliest_admission`.
local function earliest_admission(we, period, previous, current, limit, cost)
  local start = we - period
  if current + cost <= limit then
    local room = limit - current - cost
    if previous > 0 then
      local a = we - muldiv(room, period, previous)
      if a < we then
        if a < start then return start end
        return a
      end
    end
  end
  local room = limit - cost
  if current == 0 then return we end
  local free_left = muldiv(room, period, current)
  if free_left > period then free_left = period end
  return we + period - free_left
end

local function sliding_window(v, p, cost)
  local limit, period = p.limit, p.period
  local aligned = window_end(period)
  local we, wes, previous, current = aligned, nil, 0, 0
  if v then
    local a, b, c = string.match(v, '^(%d+):(%d+):(%d+)$')
    local d = rel_str(a)
    if d > 0 then
      we, wes, previous, current = d, a, tonumber(b), tonumber(c)
    elseif d + period == aligned then
      previous = tonumber(c)
    end
  end
  local start = we - period
  local left = period
  if start < 0 then left = period + start end
  local weighted = muldiv_ceil(previous, left, period)
  local used = weighted + current
  local function reset_after(cur)
    if cur > 0 then return we + period end
    if previous > 0 then return we end
    return 0
  end
  if used + cost <= limit then
    local cur = current + cost
    local value = (wes or fmt(we)) .. ':' .. previous .. ':' .. cur
    return allow(limit - used - cost, reset_after(cur)), value, ttl_ms(we + period)
  end
  local retry = earliest_admission(we, period, previous, current, limit, cost)
  local remaining = limit - used
  if remaining < 0 then remaining = 0 end
  return deny(remaining, reset_after(current), retry)
end

local ALGORITHMS = { g = gcra, f = fixed_window, l = sliding_log, w = sliding_window }

-- Rule parameters.
local nrules = tonumber(ARGV[4])
local rules = {}
for i = 1, nrules do
  local b = 9 + (i - 1) * 7
  rules[i] = {
    alg = ARGV[b + 1],
    limit = tonumber(ARGV[b + 2]),
    period = tonumber(ARGV[b + 3]),
    interval = tonumber(ARGV[b + 4]),
    burst = tonumber(ARGV[b + 5]),
    cost = tonumber(ARGV[b + 6]),
    shadow = ARGV[b + 7] == '1',
  }
end

local function reply(allowed, replayed, decisions)
  local out = { NS, NN, allowed, replayed }
  for i = 1, #decisions do
    local d = decisions[i]
    out[#out + 1] = d[1]; out[#out + 1] = d[2]; out[#out + 1] = d[3]; out[#out + 1] = d[4]
  end
  return out
end

-- Idempotency records: "<expires at>:<replays taken>".
local function take_replay(key, max)
  local v = redis.call('GET', key)
  if not v then return false end
  local e, taken = string.match(v, '^(%d+):(%d+)$')
  taken = tonumber(taken)
  if rel_str(e) > 0 and taken < max then
    redis.call('SET', key, e .. ':' .. (taken + 1), 'KEEPTTL')
    return true
  end
  return false
end

local function create_replay(key, ttl)
  local v = redis.call('GET', key)
  if v then
    local e = string.match(v, '^(%d+):')
    -- A live record (even at its cap) stays until it expires.
    if e and rel_str(e) > 0 then return end
  end
  redis.call('SET', key, fmt(ttl) .. ':0', 'PX', ttl_ms(ttl))
end

local has_replay = ARGV[5] == '1'
local replay_key = KEYS[nrules + 1]
local replay_ttl = tonumber(ARGV[6])
local max_replays = tonumber(ARGV[7])

if mode == 'r' then
  local replayed = 0
  if take_replay(KEYS[1], max_replays) then replayed = 1 end
  return reply(replayed, replayed, {})
end
if mode == 'n' then
  create_replay(KEYS[1], replay_ttl)
  return reply(1, 0, {})
end

if mode == 'u' then
  -- Refund: reverse a charge this request made at (charged_s, charged_n), as far as it still
  -- stands (another request may have moved the state on since).
  local cs, cn = tonumber(ARGV[8]), tonumber(ARGV[9])
  local charged = rel(cs, cn) -- when the charge was made, relative to now
  for i = 1, nrules do
    local p, key = rules[i], KEYS[i]
    local v = redis.call('GET', key)
    if v then
      if p.alg == 'g' then
        local tat = rel_str(v) - p.cost * p.interval
        if tat > 0 then
          redis.call('SET', key, fmt(tat), 'PX', ttl_ms(tat))
        else
          redis.call('DEL', key)
        end
      elseif p.alg == 'f' then
        local a, b = string.match(v, '^(%d+):(%d+)$')
        -- The end of the charge's window, relative to now.
        local we = charged + window_end_from(cs, cn, p.period)
        local count = tonumber(b)
        if rel_str(a) == we and count >= p.cost then
          redis.call('SET', key, a .. ':' .. (count - p.cost), 'KEEPTTL')
        end
      elseif p.alg == 'w' then
        local a, b, c = string.match(v, '^(%d+):(%d+):(%d+)$')
        local we = charged + window_end_from(cs, cn, p.period)
        local d = rel_str(a)
        local prev, cur = tonumber(b), tonumber(c)
        if d == we and cur >= p.cost then
          redis.call('SET', key, a .. ':' .. prev .. ':' .. (cur - p.cost), 'KEEPTTL')
        elseif d == we + p.period and prev >= p.cost then
          redis.call('SET', key, a .. ':' .. (prev - p.cost) .. ':' .. cur, 'KEEPTTL')
        end
      elseif p.alg == 'l' then
        local parts, removed = {}, false
        for a, c in string.gmatch(v, '(%d+):(%d+)') do
          c = tonumber(c)
          if not removed and rel_str(a) == charged and c >= p.cost then
            removed = true
            c = c - p.cost
          end
          if c > 0 then parts[#parts + 1] = a .. ':' .. c end
        end
        if removed then
          if #parts > 0 then
            redis.call('SET', key, table.concat(parts, ','), 'KEEPTTL')
          else
            redis.call('DEL', key)
          end
        end
      end
    end
  end
  return reply(1, 0, {})
end

local charge = mode == 'c'
local replayed = false
if charge and has_replay then
  replayed = take_replay(replay_key, max_replays)
  if replayed then charge = false end
end

local decisions, writes = {}, {}
local allowed = 1
for i = 1, nrules do
  local p = rules[i]
  local decide = ALGORITHMS[p.alg]
  local v = redis.call('GET', KEYS[i])
  if not v then v = nil end
  local d, value, ttl
  if charge then
    d, value, ttl = decide(v, p, p.cost)
    if d[1] == 1 then writes[i] = { value, ttl } end
  elseif mode == 'p' then
    -- Would it pass? If so, report the figures as they stand.
    d = decide(v, p, p.cost)
    if d[1] == 1 then d = decide(v, p, 0) end
  else
    -- A replayed request, already paid for: the figures, at no cost.
    d = decide(v, p, 0)
  end
  decisions[i] = d
  if d[1] == 0 and not p.shadow then allowed = 0 end
end

if charge and allowed == 1 then
  for i = 1, nrules do
    local w = writes[i]
    if w then redis.call('SET', KEYS[i], w[1], 'PX', w[2]) end
  end
  if has_replay then create_replay(replay_key, replay_ttl) end
end

local r = 0
if replayed then r = 1 end
return reply(allowed, r, decisions)
