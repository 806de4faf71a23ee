-- tollgate: every rate-limit decision of one request, in one script call.
--
-- The arithmetic is the core's (crates/tollgate-core/src/algorithm/*.rs), to the nanosecond.
-- Lua 5.1 numbers are doubles, exact for integers up to 2^53, while "now" in nanoseconds since
-- the epoch is ~1.7e18. So:
--   * an absolute instant is a pair (s, n): seconds, and nanoseconds within the second;
--     it is stored as its decimal nanosecond count (the core's u64) and split at 9 digits;
--   * every computation works on differences from now, which the core bounds below 2^53
--     (period <= 2^51 ns, burst span <= 2^52 ns);
--   * divisions are floor-corrected by their remainder; a product that may reach 2^53 (a
--     window's phase `now mod period`, a sliding window's weighted count) is computed directly
--     when it stays below 2^53, else by binary long multiplication whose partial sums stay
--     below 2^53.
--
-- One call is `tollgate(KEYS, ARGV)`, the function at the end. This file is not run as it is:
-- script.rs appends `return tollgate(KEYS, ARGV)` for EVAL/EVALSHA (which runs the whole body,
-- every helper's definition included, on every call), or a `#!lua name=...` line and
-- `redis.register_function` for a Redis Function library (Redis 7: the body runs once, at
-- FUNCTION LOAD; a call runs `tollgate` alone). Either way the call itself is kept lean: no
-- table per rule or per decision, and the code of the refund and replay modes only in their
-- branch. The helpers read "now" from NS, NN and MIN_TTL, which `tollgate` sets first.
--
-- KEYS: one per rule, then the idempotency record's key when ARGV[5] is 'record'. The replay
--       modes take the record's key alone.
-- ARGV: mode, now_s, now_n (both empty: Redis TIME), nrules, replay, replay_ttl_ns,
--       max_replays, charged_s, charged_n (refunds only), then 4 per rule:
--       code, a, b, cost, where code is the algorithm's letter (g|f|l|w: the letter of its
--       state's tag), then shadow (0|1), then honours replays (0|1), e.g. 'f01'; and (a, b) is
--       (emission interval ns, burst) for GCRA, (limit, period ns) for the others.
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
-- minute of clock slack (so a stray far-future value cannot hold a key out for long). Anything
-- else -- another algorithm's or version's state, garbage, a hash, list or set at the key (GET
-- is pcall'd: WRONGTYPE is data, not an error) -- is absent state, overwritten when the request
-- is charged. A change of format bumps the version digit; a script of another version then
-- reads the value as absent, never misreads it.

local E9 = 1000000000
local TWO53 = 9007199254740992
-- Instants further apart than this (52 days) are only ever compared, never subtracted exactly.
local FAR_S = 4503599

-- Now, for the call being served: Redis TIME, or the explicit time (tests). Set by `tollgate`
-- at the start of each call.
local NS, NN = 0, 0
-- The shortest TTL given to a key, in ms. With an explicit time (tests), keys live at least a
-- minute of real time: their state is judged by the explicit time, never by their TTL.
local MIN_TTL = 1

-- floor(a / b) and a mod b for integers |a| < 2^53, b >= 1, exactly.
local function idiv(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  while r < 0 do q = q - 1; r = r + b end
  while r >= b do q = q + 1; r = r - b end
  return q, r
end

-- floor(a * b / c) and (a * b) mod c, for 0 <= a, b and 1 <= c, all below 2^52. A product
-- below 2^53 is exact as a double (and one that is not rounds to 2^53 or more); beyond, every
-- partial sum stays below 2^53.
local function muldiv(a, b, c)
  local p = a * b
  if p < TWO53 then
    return idiv(p, c)
  end
  -- Binary long multiplication of a by b, the product kept as q * c + r, 0 <= r < c.
  local qa, ra = idiv(a, c)
  local bits, nb = {}, 0
  while b > 0 do
    local bit = b % 2
    nb = nb + 1; bits[nb] = bit
    b = (b - bit) / 2
  end
  local q, r = 0, 0
  for i = nb, 1, -1 do
    q = q + q; r = r + r
    if r >= c then r = r - c; q = q + 1 end
    if bits[i] == 1 then
      q = q + qa; r = r + ra
      if r >= c then r = r - c; q = q + 1 end
    end
  end
  return q, r
end

-- Instant (s, n) minus now, in nanoseconds; clamped to +-2^53 when further than FAR_S seconds.
local function rel(s, n)
  local ds = s - NS
  if ds > FAR_S then return TWO53 end
  if ds < -FAR_S then return -TWO53 end
  return ds * E9 + (n - NN)
end

-- A stored instant, relative to now: `str` is a pattern's capture of decimal digits (or nil),
-- an instant if it has at most 19 (it fits a u64).
local function rel_str(str)
  if not str then return nil end
  local len = #str
  if len > 19 then return nil end
  if len <= 9 then return rel(0, tonumber(str)) end
  return rel(tonumber(string.sub(str, 1, len - 9)), tonumber(string.sub(str, len - 8)))
end

-- A stored count (at most 16 digits, at most 2^53); nil if `str` is not one.
local function count(str)
  if not str or #str > 16 then return nil end
  local c = tonumber(str)
  if c == nil or c > TWO53 then return nil end
  return c
end

-- now + d nanoseconds (|d| <= 2^52 + 2^51), written as the instant's decimal nanoseconds.
local function fmt(d)
  local q, r = idiv(NN + d, E9)
  return string.format('%d%09d', NS + q, r)
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
  local r
  if period % E9 == 0 then
    -- Whole seconds (the common case): (s mod (period / 1e9)) * 1e9 + n is below period.
    local _, sm = idiv(s, period / E9)
    r = sm * E9 + n
  else
    local _, sm = idiv(s, period)
    local _, em = idiv(E9, period)
    local _, nm = idiv(n, period)
    local _, pm = muldiv(sm, em, period)
    _, r = idiv(pm + nm, period)
  end
  return period - r
end

-- Each algorithm: parse_X(value, a, b) -> its state (several values; the first nil when the
-- value is not this rule's state); decide_X(state..., a, b, cost) -> allowed (0|1), remaining,
-- reset_after, retry_after, then the value to write and its ttl (ms), both nil when nothing is
-- written. (a, b): see ARGV.

-- A denial's retry, at least 1 ns.
local function at_least_one(retry)
  if retry < 1 then return 1 end
  return retry
end

-- GCRA. State: the theoretical arrival time, relative to now. (a, b) = (interval, burst).
local function parse_g(v, interval, burst)
  local used = rel_str(string.match(v, '^g1:(%d+)$'))
  if used and used < horizon(burst * interval) then return used end
  return nil
end

local function decide_g(used, interval, burst, cost)
  local tolerance = burst * interval
  if not used or used < 0 then used = 0 end
  local wanted = used + cost * interval
  if wanted <= tolerance then
    local remaining = idiv(tolerance - wanted, interval)
    return 1, remaining, wanted, 0, 'g1:' .. fmt(wanted), ttl_ms(wanted)
  end
  local free = tolerance - used
  if free < 0 then free = 0 end
  local remaining = idiv(free, interval)
  return 0, remaining, used, at_least_one(wanted - tolerance)
end

-- Fixed window. State: end relative to now, end as stored, count. (a, b) = (limit, period).
local function parse_f(v, _, period)
  local a, b = string.match(v, '^f1:(%d+):(%d+)$')
  local we, c = rel_str(a), count(b)
  if we and c and we < horizon(period) then return we, a, c end
  return nil
end

local function decide_f(we, wes, c, limit, period, cost)
  if not we or we <= 0 then
    we, wes, c = window_end_from(NS, NN, period), nil, 0
  end
  if c + cost <= limit then
    local value = 'f1:' .. (wes or fmt(we)) .. ':' .. num(c + cost)
    return 1, limit - c - cost, we, 0, value, ttl_ms(we)
  end
  local remaining = limit - c
  if remaining < 0 then remaining = 0 end
  return 0, remaining, we, at_least_one(we)
end

-- Sliding log. State: the entries, oldest first, as three lists: instants as stored, instants
-- relative to now, costs. (a, b) = (limit, period).
local function parse_l(v, _, period)
  if string.sub(v, 1, 3) ~= 'l1:' then return nil end
  local limit = horizon(period)
  local body = string.sub(v, 4)
  local sa, da, ca, at, n, pos, len = {}, {}, {}, {}, 0, 1, #body
  local last = -TWO53
  -- Entries `<at>:<cost>`, each where the previous one ended, separated by single commas.
  for p, a, b, q in string.gmatch(body, '()(%d+):(%d+)()') do
    if p ~= pos or (q <= len and string.byte(body, q) ~= 44) then return nil end
    local d, c = rel_str(a), count(b)
    if not d or not c or c < 1 or d < last or d >= limit then return nil end
    last = d
    n = n + 1; sa[n] = a; da[n] = d; ca[n] = c; at[n] = p
    pos = q + 1
  end
  -- Something else after the last entry, or a trailing comma, or no entry at all.
  if n == 0 or pos ~= len + 2 then return nil end
  -- Where each entry begins in the body, and the body: a charge appended at the end keeps the
  -- live entries' text as it is.
  at.body = body
  return sa, da, ca, at
end

local function decide_l(sa, da, ca, at, limit, period, cost)
  local n = 0
  if sa then n = #sa else sa, da, ca = {}, {}, {} end
  -- The log is sorted, oldest first, so the entries still in the window are a suffix: first..n.
  local first, used = n + 1, 0
  for i = n, 1, -1 do
    if da[i] + period <= 0 then break end
    first = i; used = used + ca[i]
  end
  if used + cost <= limit then
    local last, value = n, nil
    if cost > 0 then
      -- Keep the log sorted even if the clock went back; merge with an entry at now.
      local pos = n + 1
      for i = first, n do
        if da[i] > 0 then pos = i; break end
      end
      if pos > first and da[pos - 1] == 0 then
        ca[pos - 1] = ca[pos - 1] + cost
      elseif pos == n + 1 and pos > first then
        -- After every live entry (the clock went forward): their text as stored, then the charge.
        value = 'l1:' .. string.sub(at.body, at[first]) .. ',' .. fmt(0) .. ':' .. num(cost)
        sa[pos] = false; da[pos] = 0; ca[pos] = cost
        last = n + 1
      else
        table.insert(sa, pos, false); table.insert(da, pos, 0); table.insert(ca, pos, cost)
        last = n + 1
      end
    end
    local reset, newest = 0, 0
    if last >= first then newest = da[last] end
    local expires = newest + period
    if last >= first and expires > 0 then reset = expires end
    if not value and last >= first then
      local parts = {}
      for i = first, last do parts[i - first + 1] = (sa[i] or fmt(da[i])) .. ':' .. num(ca[i]) end
      value = 'l1:' .. table.concat(parts, ',')
    end
    return 1, limit - used - cost, reset, 0, value, ttl_ms(expires)
  end
  -- Wait until enough of the oldest entries have left the window.
  local excess = used + cost - limit
  local freed, retry = 0, period
  for i = first, n do
    freed = freed + ca[i]
    if freed >= excess then
      retry = da[i] + period
      break
    end
  end
  local reset = 0
  if n > 0 then
    reset = da[n] + period
    if reset < 0 then reset = 0 end
  end
  local remaining = limit - used
  if remaining < 0 then remaining = 0 end
  return 0, remaining, reset, at_least_one(retry)
end

-- Sliding-window counter. State: end relative to now, end as stored, previous, current.
-- (a, b) = (limit, period).
local function parse_w(v, _, period)
  local a, b, c = string.match(v, '^w1:(%d+):(%d+):(%d+)$')
  local we, previous, current = rel_str(a), count(b), count(c)
  if we and previous and current and we < horizon(period) then
    return we, a, previous, current
  end
  return nil
end

local function decide_w(swe, wes, sprevious, scurrent, limit, period, cost)
  local aligned = window_end_from(NS, NN, period)
  local we, previous, current = aligned, 0, 0
  if swe then
    if swe > 0 then
      we, previous, current = swe, sprevious, scurrent
    else
      wes = nil
      -- The window just before this one: its count is now the previous window's.
      if swe + period == aligned then previous = scurrent end
    end
  end
  local start = we - period
  local left = period
  if start < 0 then left = period + start end
  local weighted, rest = muldiv(previous, left, period)
  if rest > 0 then weighted = weighted + 1 end
  local used = weighted + current
  if used + cost <= limit then
    local cur = current + cost
    local value = 'w1:' .. (wes or fmt(we)) .. ':' .. num(previous) .. ':' .. num(cur)
    local reset = 0
    if cur > 0 then reset = we + period elseif previous > 0 then reset = we end
    return 1, limit - used - cost, reset, 0, value, ttl_ms(we + period)
  end
  -- The first instant (relative to now) at which a request of `cost` passes, if nothing else
  -- is admitted first: the core's `earliest_admission`.
  local retry = nil
  if current + cost <= limit and previous > 0 then
    local a = we - muldiv(limit - current - cost, period, previous)
    if a < we then
      retry = a
      if a < start then retry = start end
    end
  end
  if not retry then
    if current == 0 then
      retry = we
    else
      local free_left = muldiv(limit - cost, period, current)
      if free_left > period then free_left = period end
      retry = we + period - free_left
    end
  end
  local remaining = limit - used
  if remaining < 0 then remaining = 0 end
  local reset = 0
  if current > 0 then reset = we + period elseif previous > 0 then reset = we end
  return 0, remaining, reset, at_least_one(retry)
end

local PARSE = { g = parse_g, f = parse_f, l = parse_l, w = parse_w }
local DECIDE = { g = decide_g, f = decide_f, l = decide_l, w = decide_w }

-- A rule's state in the value `v` read at its key (as parse_X returns it), or nil when there is
-- none it can read (no value, a value of another type, or not this rule's state).
-- Parsing is strict and cannot raise; pcall all the same, so that no stored value ever fails a
-- request.
local function read(alg, v, a, b)
  if type(v) ~= 'string' then return nil end
  local ok, s1, s2, s3, s4 = pcall(PARSE[alg], v, a, b)
  if ok then return s1, s2, s3, s4 end
  return nil
end

-- DECIDE[alg] on the state s1..s4, or on absent state should it ever raise on what `read`
-- accepted.
local function decide(alg, s1, s2, s3, s4, a, b, cost)
  local f = DECIDE[alg]
  local ok, d1, d2, d3, d4, value, ttl
  if alg == 'g' then
    ok, d1, d2, d3, d4, value, ttl = pcall(f, s1, a, b, cost)
    if ok then return d1, d2, d3, d4, value, ttl end
    return f(nil, a, b, cost)
  elseif alg == 'w' or alg == 'l' then
    ok, d1, d2, d3, d4, value, ttl = pcall(f, s1, s2, s3, s4, a, b, cost)
    if ok then return d1, d2, d3, d4, value, ttl end
    return f(nil, nil, nil, nil, a, b, cost)
  end
  ok, d1, d2, d3, d4, value, ttl = pcall(f, s1, s2, s3, a, b, cost)
  if ok then return d1, d2, d3, d4, value, ttl end
  return f(nil, nil, nil, a, b, cost)
end

local RECORD = 'r1:'

-- Idempotency records.

-- The live record at `key`: its expiry as stored and its replays taken, or nil.
local function read_record(key)
  local e, t = string.match(get(key) or '', '^r1:(%d+):(%d+)$')
  local d, taken = rel_str(e), count(t)
  -- Records of any lifetime up to the longest (2^52 ns, enforced by the caller) are read: the
  -- lifetime a request asks for may differ from the one its record was created with.
  if d and taken and d > 0 and d < TWO53 then return e, taken end
  return nil
end

local function set_taken(key, expires, taken)
  redis.call('SET', key, RECORD .. expires .. ':' .. num(taken), 'KEEPTTL')
end

local function create_record(key, ttl)
  redis.call('SET', key, RECORD .. fmt(ttl) .. ':0', 'PX', ttl_ms(ttl))
end

-- One call: KEYS and ARGV as the header says; returns the reply.
local function tollgate(KEYS, ARGV)
  if redis.replicate_commands then redis.replicate_commands() end
  local mode = ARGV[1]
  if ARGV[2] ~= '' then
    NS = tonumber(ARGV[2]); NN = tonumber(ARGV[3])
    MIN_TTL = 60000
  else
    local t = redis.call('TIME')
    NS = tonumber(t[1]); NN = tonumber(t[2]) * 1000
    MIN_TTL = 1
  end
  local nrules = tonumber(ARGV[4])
  local replay = ARGV[5]

  if mode == 'check' or mode == 'peek' then
    local charge = mode == 'check'
    -- A request that repeats an idempotency key: free in the rules that honour replays if the
    -- record is live and under its cap (or an earlier call took the replay, in Cluster).
    local honoured = false
    for i = 1, nrules do
      if string.sub(ARGV[6 + 4 * i], 3, 3) == '1' then honoured = true end
    end
    local replay_key = KEYS[nrules + 1]
    local expires, taken = nil, nil
    local free = false
    if charge and honoured then
      if replay == 'taken' then
        free = true
      elseif replay == 'record' then
        expires, taken = read_record(replay_key)
        free = expires ~= nil and taken < tonumber(ARGV[7])
      end
    end

    -- Every rule's value in one command (MGET answers nil for a key of another type).
    local stored = {}
    if nrules > 0 then stored = redis.call('MGET', unpack(KEYS, 1, nrules)) end
    local out = { NS, NN, 1, 0 }
    local values, ttls = {}, {}
    local allowed = 1
    for i = 1, nrules do
      local base = 6 + 4 * i
      local code = ARGV[base]
      local alg = string.sub(code, 1, 1)
      local a, b, cost = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
      local s1, s2, s3, s4 = read(alg, stored[i], a, b)
      local d1, d2, d3, d4, value, ttl
      if charge then
        local waived = free and string.sub(code, 3, 3) == '1'
        if waived then cost = 0 end
        d1, d2, d3, d4, value, ttl = decide(alg, s1, s2, s3, s4, a, b, cost)
        -- A free replay is not written: it was paid for when it was first charged.
        if d1 == 1 and not waived and value then values[i] = value; ttls[i] = ttl end
      else
        -- Peek: would it pass? If so, report the figures as they stand. At cost 0 first: a
        -- charged decision may build its value in the state's own lists (sliding log).
        local f1, f2, f3, f4 = decide(alg, s1, s2, s3, s4, a, b, 0)
        d1, d2, d3, d4 = decide(alg, s1, s2, s3, s4, a, b, cost)
        if d1 == 1 then d1, d2, d3, d4 = f1, f2, f3, f4 end
      end
      local o = 4 * i
      out[o + 1] = d1; out[o + 2] = d2; out[o + 3] = d3; out[o + 4] = d4
      if d1 == 0 and string.sub(code, 2, 2) ~= '1' then allowed = 0 end
    end

    if charge and allowed == 1 then
      for i = 1, nrules do
        if values[i] then redis.call('SET', KEYS[i], values[i], 'PX', ttls[i]) end
      end
      if replay == 'record' and honoured then
        if free then
          set_taken(replay_key, expires, taken + 1)
        elseif not expires then
          create_record(replay_key, tonumber(ARGV[6]))
        end
      end
    end

    out[3] = allowed
    if free and allowed == 1 then out[4] = 1 end
    return out
  end

  if mode == 'refund' then
    -- Reverse a charge this request made at (charged_s, charged_n), as far as it still stands
    -- (another request may have moved the state on since). Each algorithm's refund takes its
    -- parsed state, the charge's instant relative to now, and the rule; it returns the value
    -- without the charge and its ttl (nil: keep the key's), false (delete the key), or nil
    -- (nothing left to undo).
    local cs, cn = tonumber(ARGV[8]), tonumber(ARGV[9])
    local charged = rel(cs, cn)

    local function refund_g(used, _, _, _, interval, _, cost)
      local tat = used - cost * interval
      if tat > 0 then return 'g1:' .. fmt(tat), ttl_ms(tat) end
      return false
    end

    local function refund_f(we, wes, c, _, _, period, cost)
      -- The end of the charge's window, relative to now.
      if we == charged + window_end_from(cs, cn, period) and c >= cost then
        return 'f1:' .. wes .. ':' .. num(c - cost)
      end
      return nil
    end

    local function refund_l(sa, da, ca, _, _, _, cost)
      local parts, removed = {}, false
      for i = 1, #sa do
        local c = ca[i]
        if not removed and da[i] == charged and c >= cost then
          removed = true
          c = c - cost
        end
        if c > 0 then parts[#parts + 1] = sa[i] .. ':' .. num(c) end
      end
      if not removed then return nil end
      if #parts == 0 then return false end
      return 'l1:' .. table.concat(parts, ',')
    end

    local function refund_w(d, wes, previous, current, _, period, cost)
      local we = charged + window_end_from(cs, cn, period)
      if d == we and current >= cost then
        return 'w1:' .. wes .. ':' .. num(previous) .. ':' .. num(current - cost)
      elseif d == we + period and previous >= cost then
        return 'w1:' .. wes .. ':' .. num(previous - cost) .. ':' .. num(current)
      end
      return nil
    end

    local REFUND = { g = refund_g, f = refund_f, l = refund_l, w = refund_w }
    for i = 1, nrules do
      local base = 6 + 4 * i
      local alg = string.sub(ARGV[base], 1, 1)
      local a, b, cost = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
      local key = KEYS[i]
      local s1, s2, s3, s4 = read(alg, get(key), a, b)
      if s1 then
        local ok, value, ttl = pcall(REFUND[alg], s1, s2, s3, s4, a, b, cost)
        -- If it raised, it was nothing this script wrote: leave it; the next charge overwrites
        -- it. Else: false deletes the key, a value with a ttl replaces it, a value alone keeps
        -- the key's TTL, nil leaves the key as it is.
        if ok then
          if value == false then
            redis.call('DEL', key)
          elseif value and ttl then
            redis.call('SET', key, value, 'PX', ttl)
          elseif value then
            redis.call('SET', key, value, 'KEEPTTL')
          end
        end
      end
    end
    return { NS, NN, 1, 0 }
  end

  if mode == 'take_replay' then
    local expires, taken = read_record(KEYS[1])
    if expires and taken < tonumber(ARGV[7]) then
      set_taken(KEYS[1], expires, taken + 1)
      return { NS, NN, 1, 1 }
    end
    return { NS, NN, 0, 0 }
  end

  if mode == 'return_replay' then
    local expires, taken = read_record(KEYS[1])
    if expires and taken > 0 then set_taken(KEYS[1], expires, taken - 1) end
    return { NS, NN, 1, 0 }
  end

  if mode == 'create_replay' then
    -- A live record (even at its cap) stays until it expires.
    if not read_record(KEYS[1]) then create_record(KEYS[1], tonumber(ARGV[6])) end
    return { NS, NN, 1, 0 }
  end

  return redis.error_reply('tollgate: unknown mode ' .. tostring(mode) ..
    '; the caller speaks another version of this script')
end
