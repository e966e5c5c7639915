-- sluice: sliding_window.lua — one sliding-window limit (the previous
-- fixed window's count, weighted by how much of it the sliding window
-- still covers, plus the current one's; compared exactly).
-- Loaded as lib.lua followed by this file; see lib.lua for the helpers.
--
-- KEYS[1]   the limit's hash: {prefix}:{tag}:{slot}, fields
--             s = current window start, microseconds since the epoch
--             p = previous window's count, c = current window's count
-- ARGV[1]   policy: "always" | "all"
-- ARGV[2]   hits (decimal u64; "0" = check only, nothing is written)
-- ARGV[3]   expiry jitter (ms)
-- ARGV[4]   "sliding"
-- ARGV[5]   window length (us; a whole number of ms)
-- ARGV[6]   requests_per_unit
-- ARGV[7]   burst (unused), ARGV[8] interval (unused)
-- ARGV[9]   window offset (us; a whole number of ms below the window;
--           0 = epoch-aligned)
--
-- With now_us from the Redis server's TIME only: start = now_us - (now_us -
-- offset_us) mod window_us; a stored window one window older becomes the
-- previous one; admitted iff previous * (window - (now - start)) +
-- (current + hits) * window <= requests * window (exact integers). Charged: s, p, c are
-- written and the key gets PEXPIRE until two windows after start + jitter.
--
-- Returns: [TIME s, TIME us, charged "0"|"1", admitted "0"|"1",
--           s before, p before, c before (each "" when absent)]
return decide(1, function(i, t, hits, jitter)
  return eval_sliding(spec_at(i), t, hits, jitter)
end)
