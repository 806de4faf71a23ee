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
-- KEYS: one per rule, then the idempotency record's key when ARGV[5] is 'record'. The replay
--       modes take the record's key alone.
-- ARGV: mode, now_s, now_n (both empty: Redis TIME), nrules, replay, replay_ttl_ns,
--       max_replays, charged_s, charged_n (refunds only), then 8 per rule:
--       algorithm (g|f|l|w: the letter of its state's tag), limit, period_ns, interval_ns, burst,
--       cost, shadow (0|1), honours replays (0|1).
-- Modes:
--   check          decide and charge, all-or-nothing. replay = 'none'; 'record' (KEYS holds the
--                  record: with a live record under its cap, the rules that honour replays pass
--                  free and are not written, the others are charged; the record counts the
--                  replay, or is created, only if the request passes); 'taken' (Cluster: an
--                  earlier call took the free replay; the rules that honour replays pass free).
--   peek           decide without charging.
--   refund         reverse a charge made at (charged_s, charged_n) (Cluster partial denial).
--   take_replay    take one free replay if the record allows it (Cluster).
--   return_replay  give back a replay taken for a request another slot denied (Cluster).
--   create_replay  create the record unless a live one exists (Cluster).
-- Reply: { now_s, now_n, allowed (0|1), replayed (0|1),
--          then 4 per rule: allowed (0|1), remaining, reset_after_ns, retry_after_ns (0: none) }
--
-- Values carry their format: a tag of the algorithm and format version, then decimal
-- nanosecond instants and counts (every key has a TTL):
--   GCRA            g1:<tat>
--   fixed window    f1:<window end>:<count>
--   sliding log     l1:<at>:<cost>,<at>:<cost>...   (oldest first)
--   sliding window  w1:<window end>:<previous>:<current>
--   idempotency     r1:<expires at>:<replays taken>
-- A value is read only if it is exactly that: the rule's tag, instants of 1 to 19 digits,
-- counts of at most 2^53, no instant further ahead than twice what the rule can write plus a
-- minute of clock slack (so a stray far-future value cannot hold a key out for long). Anything else -- another algorithm's or
-- version's state, garbage, a hash, list or set at the key (GET is pcall'd: WRONGTYPE is
-- data, not an error) -- is absent state, overwritten when the request is charged. A change
-- of format bumps the version digit; a script of another version then reads the value as
-- absent, never misreads it.

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

-- Decimal digits only: an instant has 1 to 19 (it fits a u64), a count at most 16.
local function digits(str, max)
  return type(str) == 'string' and #str >= 1 and #str <= max and string.find(str, '^%d+$') ~= nil
end

-- A stored instant, relative to now; nil if `str` is not one.
local function rel_str(str)
  if not digits(str, 19) then return nil end
  local len = #str
  if len <= 9 then return rel(0, tonumber(str)) end
  return rel(tonumber(string.sub(str, 1, len - 9)), tonumber(string.sub(str, len - 8)))
end

-- A stored count; nil if `str` is not one.
local function count(str)
  if not digits(str, 16) then return nil end
  local c = tonumber(str)
  if c > TWO53 then return nil end
  return c
end

local function fmt(d)
  local s, n = at(d)
  return string.format('%d%09d', s, n)
end

-- Counts are written as integers (tostring would switch to an exponent from 1e14 on).
local function num(c)
  return string.format('%d', c)
end

-- How far ahead of now a stored instant may lie, for state that spans `span` ns: twice the span,
-- and a minute for clocks that step between Redis primaries (a failover), but never 2^53 (the
-- clamp of `rel`). Further ahead it is not state this rule wrote, and a stray value must not
-- hold a key out for days.
local CLOCK_SLACK = 60 * E9
local function horizon(span)
  local h = 2 * span + CLOCK_SLACK
  if h > TWO53 then return TWO53 end
  return h
end

-- The string at `key`, or nil: a missing key, or a value of another type (WRONGTYPE).
local function get(key)
  local v = redis.pcall('GET', key)
  if type(v) == 'string' then return v end
  return nil
end

-- What follows `tag` in `v`, or nil when `v` is not tagged so.
local function untag(v, tag)
  if v and string.sub(v, 1, #tag) == tag then return string.sub(v, #tag + 1) end
  return nil
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

-- Each algorithm: its tag; parse(value, rule) -> state, or nil when the value is not this
-- rule's state; decide(state or nil, rule, cost) -> decision, new value (nil: nothing to write),
-- ttl (ms); refund(state, rule, charged, charged_s, charged_n) -> the value without the charge
-- and its ttl (nil: keep the key's), false (delete the key), or nil (nothing left to undo).

-- GCRA. State: the theoretical arrival time, relative to now.
local gcra = { tag = 'g1:' }

function gcra.parse(v, p)
  local used = rel_str(untag(v, gcra.tag))
  if used and used < horizon(p.burst * p.interval) then return used end
  return nil
end

function gcra.decide(used, p, cost)
  local interval, burst = p.interval, p.burst
  local tolerance = burst * interval
  if not used or used < 0 then used = 0 end
  local wanted = used + cost * interval
  if wanted <= tolerance then
    local remaining = idiv(tolerance - wanted, interval)
    return allow(remaining, wanted), gcra.tag .. fmt(wanted), ttl_ms(wanted)
  end
  local free = tolerance - used
  if free < 0 then free = 0 end
  return deny(idiv(free, interval), used, wanted - tolerance)
end

function gcra.refund(used, p)
  local tat = used - p.cost * p.interval
  if tat > 0 then return gcra.tag .. fmt(tat), ttl_ms(tat) end
  return false
end

-- Fixed window. State: { end relative to now, end as stored, count }.
local fixed_window = { tag = 'f1:' }

function fixed_window.parse(v, p)
  local a, b = string.match(untag(v, fixed_window.tag) or '', '^(%d+):(%d+)$')
  local we, c = rel_str(a), count(b)
  if we and c and we < horizon(p.period) then return { we, a, c } end
  return nil
end

function fixed_window.decide(st, p, cost)
  local limit = p.limit
  local we, wes, c
  if st and st[1] > 0 then
    we, wes, c = st[1], st[2], st[3]
  else
    we, c = window_end(p.period), 0
  end
  if c + cost <= limit then
    local value = fixed_window.tag .. (wes or fmt(we)) .. ':' .. num(c + cost)
    return allow(limit - c - cost, we), value, ttl_ms(we)
  end
  local remaining = limit - c
  if remaining < 0 then remaining = 0 end
  return deny(remaining, we, we)
end

function fixed_window.refund(st, p, charged, cs, cn)
  -- The end of the charge's window, relative to now.
  local we = charged + window_end_from(cs, cn, p.period)
  if st[1] == we and st[3] >= p.cost then
    return fixed_window.tag .. st[2] .. ':' .. num(st[3] - p.cost)
  end
  return nil
end

-- Sliding log. State: entries oldest first, { instant as stored, relative to now, cost }.
local sliding_log = { tag = 'l1:' }

function sliding_log.parse(v, p)
  local body = untag(v, sliding_log.tag)
  if not body or body == '' then return nil end
  local limit = horizon(p.period)
  local entries, n, pos, len = {}, 0, 1, #body
  local last = -TWO53
  while pos <= len do
    local comma = string.find(body, ',', pos, true)
    local piece
    if comma then
      piece = string.sub(body, pos, comma - 1)
      pos = comma + 1
      if pos > len then return nil end -- a trailing comma
    else
      piece = string.sub(body, pos)
      pos = len + 1
    end
    local a, b = string.match(piece, '^(%d+):(%d+)$')
    local d, c = rel_str(a), count(b)
    if not d or not c or c < 1 or d < last or d >= limit then return nil end
    last = d
    n = n + 1; entries[n] = { a, d, c }
  end
  return entries
end

function sliding_log.decide(entries, p, cost)
  local limit, period = p.limit, p.period
  entries = entries or {}
  local n = #entries
  local used = 0
  local live, nl = {}, 0
  for i = 1, n do
    local e = entries[i]
    if e[2] + period > 0 then
      used = used + e[3]
      nl = nl + 1; live[nl] = { e[1], e[2], e[3] }
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
      parts[i] = (e[1] or fmt(e[2])) .. ':' .. num(e[3])
    end
    local value = nil
    if nl > 0 then value = sliding_log.tag .. table.concat(parts, ',') end
    return allow(limit - used - cost, reset), value, ttl_ms(expires)
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

function sliding_log.refund(entries, p, charged)
  local parts, removed = {}, false
  for i = 1, #entries do
    local e = entries[i]
    local c = e[3]
    if not removed and e[2] == charged and c >= p.cost then
      removed = true
      c = c - p.cost
    end
    if c > 0 then parts[#parts + 1] = e[1] .. ':' .. num(c) end
  end
  if not removed then return nil end
  if #parts == 0 then return false end
  return sliding_log.tag .. table.concat(parts, ',')
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

-- Sliding-window counter. State: { end relative to now, end as stored, previous, current }.
local sliding_window = { tag = 'w1:' }

function sliding_window.parse(v, p)
  local a, b, c = string.match(untag(v, sliding_window.tag) or '', '^(%d+):(%d+):(%d+)$')
  local we, previous, current = rel_str(a), count(b), count(c)
  if we and previous and current and we < horizon(p.period) then
    return { we, a, previous, current }
  end
  return nil
end

function sliding_window.decide(st, p, cost)
  local limit, period = p.limit, p.period
  local aligned = window_end(period)
  local we, wes, previous, current = aligned, nil, 0, 0
  if st then
    if st[1] > 0 then
      we, wes, previous, current = st[1], st[2], st[3], st[4]
    elseif st[1] + period == aligned then
      -- The window just before this one: its count is now the previous window's.
      previous = st[4]
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
    local value = sliding_window.tag .. (wes or fmt(we)) .. ':' .. num(previous) .. ':' .. num(cur)
    return allow(limit - used - cost, reset_after(cur)), value, ttl_ms(we + period)
  end
  local retry = earliest_admission(we, period, previous, current, limit, cost)
  local remaining = limit - used
  if remaining < 0 then remaining = 0 end
  return deny(remaining, reset_after(current), retry)
end

function sliding_window.refund(st, p, charged, cs, cn)
  local we = charged + window_end_from(cs, cn, p.period)
  local d, a, previous, current = st[1], st[2], st[3], st[4]
  if d == we and current >= p.cost then
    return sliding_window.tag .. a .. ':' .. num(previous) .. ':' .. num(current - p.cost)
  elseif d == we + p.period and previous >= p.cost then
    return sliding_window.tag .. a .. ':' .. num(previous - p.cost) .. ':' .. num(current)
  end
  return nil
end

local ALGORITHMS = { g = gcra, f = fixed_window, l = sliding_log, w = sliding_window }

-- A rule's state at `key`, or nil when there is none this rule can read.
local function read(p, key)
  local v = get(key)
  if not v then return nil end
  -- Parsing is strict and cannot raise; pcall all the same, so that no stored value ever
  -- fails a request.
  local ok, st = pcall(p.alg.parse, v, p)
  if ok then return st end
  return nil
end

-- p.alg.decide, on absent state should it ever raise on what `read` accepted.
local function decide(p, st, cost)
  local ok, d, value, ttl = pcall(p.alg.decide, st, p, cost)
  if ok then return d, value, ttl end
  return p.alg.decide(nil, p, cost)
end

-- Rule parameters and the idempotency record's, read once the mode is known (below).
local nrules, rules
local replay = ARGV[5]
local replay_ttl = tonumber(ARGV[6])
local max_replays = tonumber(ARGV[7])
local RECORD = 'r1:'

local function reply(allowed, replayed, decisions)
  local out = { NS, NN, allowed, replayed }
  for i = 1, #decisions do
    local d = decisions[i]
    out[#out + 1] = d[1]; out[#out + 1] = d[2]; out[#out + 1] = d[3]; out[#out + 1] = d[4]
  end
  return out
end

-- Idempotency records.

-- The live record at `key` as { expires at (as stored), replays taken }, or nil.
local function read_record(key)
  local e, t = string.match(untag(get(key), RECORD) or '', '^(%d+):(%d+)$')
  local d, taken = rel_str(e), count(t)
  -- Records of any lifetime up to the longest (2^52 ns, enforced by the caller) are read: the
  -- lifetime a request asks for may differ from the one its record was created with.
  if d and taken and d > 0 and d < TWO53 then return { e, taken } end
  return nil
end

local function set_taken(key, record, taken)
  redis.call('SET', key, RECORD .. record[1] .. ':' .. num(taken), 'KEEPTTL')
end

local function create_record(key)
  redis.call('SET', key, RECORD .. fmt(replay_ttl) .. ':0', 'PX', ttl_ms(replay_ttl))
end

-- Writes what an algorithm's refund returned for `key`: false deletes the key, a value with a
-- ttl replaces it, a value alone keeps the key's TTL, nil leaves the key as it is.
local function write_refund(key, value, ttl)
  if value == false then
    redis.call('DEL', key)
  elseif value and ttl then
    redis.call('SET', key, value, 'PX', ttl)
  elseif value then
    redis.call('SET', key, value, 'KEEPTTL')
  end
end

-- Every rule's decision, charged (all-or-nothing) when `charge`, else a peek.
local function decide_all(charge)
  -- A request that repeats an idempotency key: free in the rules that honour replays if the
  -- record is live and under its cap (or an earlier call took the replay, in Cluster).
  local honoured = false
  for i = 1, nrules do
    if rules[i].replays then honoured = true end
  end
  local replay_key = KEYS[nrules + 1]
  local record = nil
  local free = false
  if charge and honoured then
    if replay == 'taken' then
      free = true
    elseif replay == 'record' then
      record = read_record(replay_key)
      free = record ~= nil and record[2] < max_replays
    end
  end

  local decisions, writes = {}, {}
  local allowed = 1
  for i = 1, nrules do
    local p = rules[i]
    local st = read(p, KEYS[i])
    local d, value, ttl
    if charge then
      local waived = free and p.replays
      local cost = p.cost
      if waived then cost = 0 end
      d, value, ttl = decide(p, st, cost)
      -- A free replay is not written: it was paid for when it was first charged.
      if d[1] == 1 and not waived and value then writes[i] = { value, ttl } end
    else
      -- Peek: would it pass? If so, report the figures as they stand.
      d = decide(p, st, p.cost)
      if d[1] == 1 then d = decide(p, st, 0) end
    end
    decisions[i] = d
    if d[1] == 0 and not p.shadow then allowed = 0 end
  end

  if charge and allowed == 1 then
    for i = 1, nrules do
      local w = writes[i]
      if w then redis.call('SET', KEYS[i], w[1], 'PX', w[2]) end
    end
    if replay == 'record' and honoured then
      if free then
        set_taken(replay_key, record, record[2] + 1)
      elseif not record then
        create_record(replay_key)
      end
    end
  end

  local replayed = 0
  if free and allowed == 1 then replayed = 1 end
  return reply(allowed, replayed, decisions)
end

-- The modes (see the header), like the algorithms a table: each returns the reply.
local MODES = {}

function MODES.check() return decide_all(true) end

function MODES.peek() return decide_all(false) end

function MODES.refund()
  -- Reverse a charge this request made at (charged_s, charged_n), as far as it still stands
  -- (another request may have moved the state on since).
  local cs, cn = tonumber(ARGV[8]), tonumber(ARGV[9])
  local charged = rel(cs, cn) -- when the charge was made, relative to now
  for i = 1, nrules do
    local p, key = rules[i], KEYS[i]
    local st = read(p, key)
    if st then
      local ok, value, ttl = pcall(p.alg.refund, st, p, charged, cs, cn)
      -- If it raised, it was nothing this script wrote: leave it; the next charge overwrites it.
      if ok then write_refund(key, value, ttl) end
    end
  end
  return reply(1, 0, {})
end

function MODES.take_replay()
  local record = read_record(KEYS[1])
  if record and record[2] < max_replays then
    set_taken(KEYS[1], record, record[2] + 1)
    return reply(1, 1, {})
  end
  return reply(0, 0, {})
end

function MODES.return_replay()
  local record = read_record(KEYS[1])
  if record and record[2] > 0 then set_taken(KEYS[1], record, record[2] - 1) end
  return reply(1, 0, {})
end

function MODES.create_replay()
  -- A live record (even at its cap) stays until it expires.
  if not read_record(KEYS[1]) then create_record(KEYS[1]) end
  return reply(1, 0, {})
end

local run = MODES[mode]
if not run then
  return redis.error_reply('tollgate: unknown mode ' .. tostring(mode) ..
    '; the caller speaks another version of this script')
end

nrules = tonumber(ARGV[4])
rules = {}
for i = 1, nrules do
  local b = 9 + (i - 1) * 8
  rules[i] = {
    alg = ALGORITHMS[ARGV[b + 1]],
    limit = tonumber(ARGV[b + 2]),
    period = tonumber(ARGV[b + 3]),
    interval = tonumber(ARGV[b + 4]),
    burst = tonumber(ARGV[b + 5]),
    cost = tonumber(ARGV[b + 6]),
    shadow = ARGV[b + 7] == '1',
    replays = ARGV[b + 8] == '1',
  }
end

return run()
