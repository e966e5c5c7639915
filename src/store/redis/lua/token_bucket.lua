-- sluice: token_bucket.lua — one GCRA token bucket: the state is the
-- theoretical arrival time (TAT) of the next request; each hit moves it
-- one emission interval forward; a request fits while TAT - now <= burst *
-- interval.
-- Loaded as lib.lua followed by this file; see lib.lua for the helpers.
--
-- KEYS[1]   the limit's hash: {prefix}:{tag}:{slot}, field
--             t = TAT, nanoseconds since the epoch (decimal u64)
-- ARGV[1]   policy: "always" | "all"
-- ARGV[2]   hits (decimal u64; "0" = check only, nothing is written)
-- ARGV[3]   expiry jitter (ms)
-- ARGV[4]   "bucket"
-- ARGV[5]   window length (us; unused here)
-- ARGV[6]   requests_per_unit, ARGV[7] burst (a 0 in either: never fills,
--           only hits = 0 passes, nothing is written)
-- ARGV[8]   emission interval, ns = max(window_ns / requests, 1), from Rust
-- ARGV[9]   window offset (us; unused: a bucket has no window starts)
--
-- With now_ns from the Redis server's TIME only: tat = max(TAT, now);
-- new = tat + interval * hits; admitted iff new - now <= interval * burst
-- and new <= u64::MAX (all exact big integers). Charged: t = min(new,
-- u64::MAX) and PEXPIRE until that TAT (rounded up to the ms) + jitter.
--
-- Returns: [TIME s, TIME us, charged "0"|"1", admitted "0"|"1",
--           TAT before (or ""), "", ""]
return decide(1, function(i, t, hits, jitter)
  return eval_bucket(spec_at(i), t, hits, jitter)
end)
