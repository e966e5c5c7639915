-- sluice: shared library, prepended (by include_str!/concat!) to every
-- entry script in this directory: batch.lua, fixed_window.lua,
-- sliding_window.lua, token_bucket.lua and multi_limit.lua. It defines no
-- KEYS or ARGV of its own and returns nothing. The single-check scripts
-- (every script but batch.lua, which has its own layout) use `decide`,
-- which reads this ARGV layout:
--
--   ARGV[1]            policy: "always" (charge even when over the limit)
--                      or "all" (charge only when every limit admits)
--   ARGV[2]            hits: decimal u64; "0" checks without writing
--   ARGV[3]            expiry jitter, milliseconds, added to every PEXPIRE
--   then 6 per limit i (KEYS[i]), from ARGV[4 + 6*(i-1)]:
--     alg              "fixed" | "sliding" | "bucket"
--     window_us        window length in microseconds
--     requests         requests_per_unit (u32, decimal)
--     burst            bucket size (u32, decimal; buckets only)
--     interval_ns      GCRA emission interval in nanoseconds, computed in
--                      Rust as max(window_ns / requests, 1) (buckets only)
--     offset_us        window offset in microseconds: window starts are
--                      this far past the epoch-aligned ones (< window_us;
--                      0 for configured limits; unused by buckets)
--
-- Returns (built by `reply`): an array of strings
--   [1] TIME seconds, [2] TIME microseconds  (the Redis server's clock)
--   [3] "1" if the hits were charged (state written), else "0"
--   [4] "1" if every limit admitted, else "0"
--   then 3 per limit i: the state read BEFORE this call, "" when absent:
--     fixed:   window start (us since epoch), count, ""
--     sliding: window start (us since epoch), previous count, current count
--     bucket:  TAT (ns since epoch), "", ""
-- Rust rebuilds each limit's state from these and runs the same
-- core::algorithm code at the same `now`, so every verdict number
-- (used_before, remaining, reset_ns) is computed by the Rust algorithms;
-- the script only has to make the same admit/charge decision and write the
-- same new state, which Rust checks.
--
-- Time: only the Redis server's TIME is read; never a client clock.
-- now_ns = seconds * 1e9 + micros * 1000. Lua numbers are doubles (exact
-- integers only below 2^53 ~ 9.007e15), so:
--   * window arithmetic is done in microseconds as doubles: now_us ~ 1.8e15,
--     windows and offsets (at most 100 years = 3.15e15 us, see Rust's
--     MAX_WINDOW_NS) and now_us + window_us stay below 2^53, so they are
--     exact, and math.fmod is exact. Since TIME has microsecond resolution
--     and every window and offset is a whole number of milliseconds,
--     ns = us * 1000 exactly, so window starts and the sliding weights
--     match the Rust nanosecond arithmetic.
--   * counts, hits, products and GCRA timestamps (ns ~ 1.7e18, bucket
--     depths up to burst * interval ~ 2^87) use the small arbitrary-
--     precision unsigned integers below (decimal limbs of 7 digits, whose
--     products < 1e14 are exact in doubles), saturating at u64::MAX where
--     Rust saturates.

if redis.replicate_commands then
  -- Redis < 5 needs effects replication for a write after TIME; a no-op
  -- (or absent) from Redis 7 on.
  pcall(redis.replicate_commands)
end

local BASE = 10000000
local DIGITS = 7

local function trim(a)
  local n = #a
  while n > 1 and a[n] == 0 do
    a[n] = nil
    n = n - 1
  end
  return a
end

-- A non-negative decimal string (false or "" = 0) to limbs, least
-- significant first.
local function big(s)
  local t = {}
  if not s or s == '' then
    t[1] = 0
    return t
  end
  local i = #s
  while i >= 1 do
    local j = i - DIGITS + 1
    if j < 1 then j = 1 end
    t[#t + 1] = tonumber(string.sub(s, j, i))
    i = j - 1
  end
  return trim(t)
end

-- An integral double below 2^53 to limbs.
local function bignum(x)
  return big(string.format('%.0f', x))
end

local function str(a)
  local parts = { string.format('%d', a[#a]) }
  for i = #a - 1, 1, -1 do
    parts[#parts + 1] = string.format('%07d', a[i])
  end
  return table.concat(parts)
end

local function is_zero(a)
  return #a == 1 and a[1] == 0
end

local function cmp(a, b)
  if #a ~= #b then
    return #a < #b and -1 or 1
  end
  for i = #a, 1, -1 do
    if a[i] ~= b[i] then
      return a[i] < b[i] and -1 or 1
    end
  end
  return 0
end

local function add(a, b)
  local r, carry = {}, 0
  local n = #a
  if #b > n then n = #b end
  for i = 1, n do
    local s = (a[i] or 0) + (b[i] or 0) + carry
    if s >= BASE then
      r[i] = s - BASE
      carry = 1
    else
      r[i] = s
      carry = 0
    end
  end
  if carry > 0 then r[n + 1] = carry end
  return r
end

-- a - b, for a >= b.
local function sub(a, b)
  local r, borrow = {}, 0
  for i = 1, #a do
    local d = a[i] - (b[i] or 0) - borrow
    if d < 0 then
      d = d + BASE
      borrow = 1
    else
      borrow = 0
    end
    r[i] = d
  end
  return trim(r)
end

local function mul(a, b)
  local r = {}
  local na, nb = #a, #b
  for i = 1, na + nb do r[i] = 0 end
  for i = 1, na do
    local ai = a[i]
    if ai ~= 0 then
      local carry = 0
      for j = 1, nb do
        local cur = r[i + j - 1] + ai * b[j] + carry
        carry = math.floor(cur / BASE)
        r[i + j - 1] = cur - carry * BASE
      end
      local k = i + nb
      while carry > 0 do
        local cur = r[k] + carry
        carry = math.floor(cur / BASE)
        r[k] = cur - carry * BASE
        k = k + 1
      end
    end
  end
  return trim(r)
end

local ZERO = big('0')
local U64_MAX = big('18446744073709551615')

local function sat64(a)
  if cmp(a, U64_MAX) > 0 then return U64_MAX end
  return a
end

-- The Redis server's clock.
local function now()
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  return {
    s = t[1],
    us_part = t[2],
    us = s * 1000000 + us,
    ns = big(string.format('%.0f%06d000', s, us)),
  }
end

-- Milliseconds to keep a key whose state matters for `us` more
-- microseconds, rounded up, plus the jitter.
local function ttl_ms(us, jitter)
  local ms = math.floor((us + 999) / 1000)
  if ms < 1 then ms = 1 end
  return ms + jitter
end

-- The same for a nanosecond bignum (<= u64::MAX, so the ms fit a double).
local function ttl_ms_big(ns, jitter)
  local s = str(ns)
  local ms
  if #s <= 6 then
    ms = 1
  else
    ms = tonumber(string.sub(s, 1, #s - 6))
    if tonumber(string.sub(s, #s - 5)) > 0 then ms = ms + 1 end
  end
  if ms < 1 then ms = 1 end
  return ms + jitter
end

local function spec_at(i)
  local b = 3 + 6 * (i - 1)
  return {
    key = KEYS[i],
    alg = ARGV[b + 1],
    window_us = tonumber(ARGV[b + 2]),
    requests = ARGV[b + 3],
    burst = ARGV[b + 4],
    interval = ARGV[b + 5],
    offset_us = tonumber(ARGV[b + 6]),
  }
end

-- Each evaluator returns: admitted (bool), the state read (3 strings) and
-- a function that writes the new state (called only when charging).

-- The start of the window holding `t` (us): the largest start <= now
-- that is offset_us past a multiple of the window; as Rust's
-- LimitSpec::window_start: now - (now + w - offset mod w) mod w. Every
-- operand is non-negative, so fmod is the mathematical remainder.
local function window_start(spec, t)
  local w = spec.window_us
  return t.us - math.fmod(t.us + w - math.fmod(spec.offset_us, w), w)
end

local function eval_fixed(spec, t, hits, jitter)
  local w = spec.window_us
  local start = window_start(spec, t)
  local st = redis.call('HMGET', spec.key, 's', 'c')
  local before = ZERO
  if st[1] and tonumber(st[1]) == start then
    before = big(st[2])
  end
  local after = sat64(add(before, hits))
  local admitted = cmp(after, big(spec.requests)) <= 0
  local function write()
    redis.call('HSET', spec.key, 's', string.format('%.0f', start), 'c', str(after))
    redis.call('PEXPIRE', spec.key, ttl_ms(start + w - t.us, jitter))
  end
  return admitted, { st[1] or '', st[2] or '', '' }, write
end

local function eval_sliding(spec, t, hits, jitter)
  local w = spec.window_us
  local start = window_start(spec, t)
  local st = redis.call('HMGET', spec.key, 's', 'p', 'c')
  local previous, current = ZERO, ZERO
  if st[1] then
    local s = tonumber(st[1])
    if s == start then
      previous, current = big(st[2]), big(st[3])
    elseif s + w == start then
      previous = big(st[3])
    end
  end
  -- previous * overlap + current * w + hits * w <= requests * w, in us
  -- (the ns comparison scaled down by 1000 on both sides: the same answer).
  local wb = bignum(w)
  local overlap = bignum(w - (t.us - start))
  local after = add(add(mul(previous, overlap), mul(current, wb)), mul(hits, wb))
  local admitted = cmp(after, mul(big(spec.requests), wb)) <= 0
  local function write()
    redis.call('HSET', spec.key, 's', string.format('%.0f', start),
      'p', str(previous), 'c', str(sat64(add(current, hits))))
    redis.call('PEXPIRE', spec.key, ttl_ms(start + 2 * w - t.us, jitter))
  end
  return admitted, { st[1] or '', st[2] or '', st[3] or '' }, write
end

local function eval_bucket(spec, t, hits, jitter)
  local stored = redis.call('HGET', spec.key, 't')
  local state = { stored or '', '', '' }
  if spec.requests == '0' or spec.burst == '0' then
    -- A bucket that never fills: only a check without hits passes, and
    -- the state does not change.
    return is_zero(hits), state, function() end
  end
  local interval = big(spec.interval)
  local tat = big(stored)
  if cmp(tat, t.ns) < 0 then tat = t.ns end
  local new_tat = add(tat, mul(interval, hits))
  local ahead = sub(new_tat, t.ns)
  local tau = mul(interval, big(spec.burst))
  local admitted = cmp(ahead, tau) <= 0 and cmp(new_tat, U64_MAX) <= 0
  local function write()
    local keep = sat64(new_tat)
    redis.call('HSET', spec.key, 't', str(keep))
    redis.call('PEXPIRE', spec.key, ttl_ms_big(sub(keep, t.ns), jitter))
  end
  return admitted, state, write
end

local EVALUATORS = {
  fixed = eval_fixed,
  sliding = eval_sliding,
  bucket = eval_bucket,
}

-- Evaluates limits 1..n with `evaluate(i, t, hits, jitter)` (reads only,
-- nothing written yet). Returns whether every limit admitted, the states
-- read (3 strings per limit, appended to `reply`) and the write functions.
local function evaluate_all(n, evaluate, t, hits, jitter, reply)
  local all_admitted = true
  local writes = {}
  for i = 1, n do
    local admitted, state, write = evaluate(i, t, hits, jitter)
    all_admitted = all_admitted and admitted
    writes[i] = write
    reply[#reply + 1] = state[1]
    reply[#reply + 1] = state[2]
    reply[#reply + 1] = state[3]
  end
  return all_admitted, writes
end

-- Charges as the policy says (`always`, or only when every limit admitted;
-- never with 0 hits), running every write; returns whether it charged.
local function charge(always, hits, all_admitted, writes)
  if is_zero(hits) or not (always or all_admitted) then
    return false
  end
  for i = 1, #writes do writes[i]() end
  return true
end

-- Decides limits 1..n with `evaluate(i)` giving each one's verdict, charges
-- them as ARGV's policy says, and builds the reply. `at` is for the test
-- suite only (a script of its own that decides at chosen instants); every
-- entry script here passes nothing and the Redis server's TIME is used.
local function decide(n, evaluate, at)
  local t = at or now()
  local reply = { t.s, t.us_part, '0', '0' }
  local all_admitted, writes =
    evaluate_all(n, evaluate, t, big(ARGV[2]), tonumber(ARGV[3]), reply)
  if charge(ARGV[1] == 'always', big(ARGV[2]), all_admitted, writes) then
    reply[3] = '1'
  end
  if all_admitted then reply[4] = '1' end
  return reply
end
