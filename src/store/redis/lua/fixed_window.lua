-- sluice: fixed_window.lua — one fixed-window limit (the common case:
-- envoyproxy/ratelimit's single limit, usually charged with "always").
-- Loaded as lib.lua followed by this file; see lib.lua for the helpers.
--
-- KEYS[1]   the limit's hash: {prefix}:{tag}:{slot}, fields
--             s = window start, microseconds since the epoch
--             c = count in that window (decimal u64)
-- ARGV[1]   policy: "always" | "all"
-- ARGV[2]   hits (decimal u64; "0" = check only, nothing is written)
-- ARGV[3]   expiry jitter (ms)
-- ARGV[4]   "fixed"
-- ARGV[5]   window length (us; a whole number of ms)
-- ARGV[6]   requests_per_unit
-- ARGV[7]   burst (unused), ARGV[8] interval (unused)
-- ARGV[9]   window offset (us; a whole number of ms below the window;
--           0 = epoch-aligned)
--
-- Windows are aligned to the epoch plus the offset, with now_us from the
-- Redis server's TIME only: start = now_us - (now_us - offset_us) mod
-- window_us (the largest start <= now_us that is offset_us past a multiple
-- of the window). A count whose start is not the current window's is 0.
-- Charged: s and c are written and the key gets PEXPIRE until the window
-- ends (rounded up to the ms) + jitter.
--
-- Returns: [TIME s, TIME us, charged "0"|"1", admitted "0"|"1",
--           s before (or ""), c before (or ""), ""]
return decide(1, function(i, t, hits, jitter)
  return eval_fixed(spec_at(i), t, hits, jitter)
end)
