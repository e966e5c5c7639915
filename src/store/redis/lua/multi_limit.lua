-- sluice: multi_limit.lua — any number of limits of mixed algorithms under
-- one descriptor, decided together: with policy "all" the hits are charged
-- only if every limit admits (all-or-nothing), with "always" they are
-- charged to every limit regardless. Used for every check with more than
-- one limit (and by the tests for single limits too).
-- Loaded as lib.lua followed by this file; see lib.lua for the helpers.
--
-- KEYS[i]   limit i's hash, {prefix}:{tag}:{slot_i}; every key of one call
--           has the same {tag}, so they hash to one cluster slot. Fields as
--           in fixed_window.lua, sliding_window.lua, token_bucket.lua.
-- ARGV[1]   policy: "always" | "all"
-- ARGV[2]   hits (decimal u64; "0" = check only, nothing is written)
-- ARGV[3]   expiry jitter (ms)
-- ARGV[4 + 6*(i-1) ..]  limit i, 6 values: algorithm ("fixed" |
--           "sliding" | "bucket"), window (us), requests_per_unit, burst,
--           interval (ns), window offset (us; fixed and sliding only)
--
-- Time is read once from the Redis server's TIME, so every limit is
-- decided at the same instant. Every limit is read and evaluated first;
-- then, if charging, each limit's new state is written with its PEXPIRE
-- (window end, two windows for sliding, the TAT for buckets; + jitter).
--
-- Returns: [TIME s, TIME us, charged "0"|"1", admitted "0"|"1", then 3
--           strings per limit: its state before the call, as in the
--           single-limit scripts]
return decide(#KEYS, function(i, t, hits, jitter)
  local spec = spec_at(i)
  local evaluate = EVALUATORS[spec.alg]
  if not evaluate then
    error({ err = 'ERR sluice: unknown algorithm ' .. tostring(spec.alg) })
  end
  return evaluate(spec, t, hits, jitter)
end)
