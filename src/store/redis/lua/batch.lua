-- sluice: batch.lua — any number of checks, each one descriptor's limits
-- (one or several, of any algorithm), decided one after the other in one
-- atomic call: the whole batch runs at one instant of the Redis server's
-- clock, and each check is decided exactly as multi_limit.lua decides it
-- (a later check of the same key sees what an earlier one wrote).
-- Loaded as the line `#!lua flags=allow-cross-slot-keys`, then lib.lua,
-- then this file (Redis 7 or later: the flag lets one call touch keys of
-- several slots, all served by the node it runs on).
--
-- KEYS      none: the keys are built from ARGV, so Redis does not route
--           the call; the client sends it to the node that owns every
--           check's slot (Redis Cluster), or to the one server.
-- ARGV[1]   MessagePack: an array of checks, each an array of
--             [1] key base, "{prefix}:v2:{<tag>}:" (see keys.rs)
--             [2] policy: "always" | "all"
--             [3] hits (decimal string; "0" = check only, nothing written)
--             [4] expiry jitter (ms, integer)
--           then 7 per limit: slot (16 hex digits; the key is base..slot),
--           algorithm ("fixed" | "sliding" | "bucket"), window (us,
--           integer), requests_per_unit (decimal string), burst (decimal
--           string), interval (ns, decimal string), window offset (us,
--           integer), with the meanings of lib.lua.
--
-- Every limit of a check is read and evaluated before any is written, and
-- that part runs under pcall: a check that fails there (a key this node
-- does not serve, a cluster that is down, a bad argument) has written
-- nothing and gets an error entry, and the other checks go on. Then the
-- check is charged (writes cannot fail for keys just read).
--
-- Returns: MessagePack of [TIME s, TIME us, then one array per check:
--   ["1", charged "0"|"1", admitted "0"|"1", 3 strings per limit (its
--    state before the call, as in multi_limit.lua)]
--   ["R", message]  refused: the node does not serve one of the check's
--                   keys now (resharding, failover) or the cluster is
--                   down; nothing was written, the check may be sent again
--   ["E", message]  any other error; nothing was written
-- ]. Time: only the Redis server's TIME.

local checks = cmsgpack.unpack(ARGV[1])
local t = now()
local out = { t.s, t.us_part }

local function evaluate_check(c)
  local base = c[1]
  local hits = big(c[3])
  local jitter = c[4]
  local n = (#c - 4) / 7
  if n < 1 or n ~= math.floor(n) then
    error('sluice: a check needs 4 + 7 * limits values, got ' .. #c)
  end
  local entry = { '1', '0', '0' }
  local all_admitted, writes = evaluate_all(n, function(i)
    local b = 4 + 7 * (i - 1)
    local spec = {
      key = base .. c[b + 1],
      alg = c[b + 2],
      window_us = c[b + 3],
      requests = c[b + 4],
      burst = c[b + 5],
      interval = c[b + 6],
      offset_us = c[b + 7],
    }
    local evaluate = EVALUATORS[spec.alg]
    if not evaluate then
      error('sluice: unknown algorithm ' .. tostring(spec.alg))
    end
    return evaluate(spec, t, hits, jitter)
  end, t, hits, jitter, entry)
  return entry, all_admitted, writes, hits
end

for i = 1, #checks do
  local c = checks[i]
  local ok, entry, all_admitted, writes, hits = pcall(evaluate_check, c)
  if ok then
    if charge(c[2] == 'always', hits, all_admitted, writes) then
      entry[2] = '1'
    end
    if all_admitted then entry[3] = '1' end
    out[#out + 1] = entry
  else
    local msg = entry
    if type(msg) == 'table' then msg = msg.err end
    msg = tostring(msg)
    if string.find(msg, 'non local key', 1, true)
      or string.find(msg, 'cluster is down', 1, true) then
      out[#out + 1] = { 'R', msg }
    else
      out[#out + 1] = { 'E', msg }
    end
  end
end

return cmsgpack.pack(out)
