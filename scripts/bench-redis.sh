#!/usr/bin/env bash
# Load benchmark of sluice with its counters in Redis, side by side in one
# run: a local standalone Redis and a local Redis Cluster (3 masters + 3
# replicas, all on this machine), the memory store, the do-nothing ceiling,
# and optionally a peer server you built yourself (its own Redis setup is
# yours to give in PEER_CMD).
#
# Every server is measured in each of REPEAT interleaved rounds (round 1:
# each case and point on every server back to back, then round 2, ...), so
# that a change in the machine's load hits all of them alike; the summary
# gives medians over the rounds and ratios between runs of the same round.
#
# Reports, per server, case and load point: throughput and p99 (h2load via
# ../shared/bench/rls_bench.py), server and Redis CPU, Redis commands and
# EVALSHA calls per decision (INFO commandstats on the standalone server or
# on the cluster's masters, against the requests sent, warm-up included),
# the 1-minute load average before and after, and for sluice the checks
# answered by the failure mode (sluice_store_degraded_checks_total): a run
# where that is not 0 measured the failure mode, not Redis.
#
# sluice runs with default flags (SLUICE_REDIS_FLAGS adds some, e.g.
# "--redis-batch-wait-us 50").
#
#   scripts/bench-redis.sh
#   PEER_NAME=limitador-redis PEER_ADDR=127.0.0.1:18181 \
#   PEER_CMD="/path/to/limitador-server -b 127.0.0.1 -p 18181 -B 127.0.0.1 -P 18180 limits.yaml redis redis://127.0.0.1:18379" \
#   scripts/bench-redis.sh
#
# Knobs: POINTS (default 1x1,16x16,64x8), REQUESTS (40000 per run), REPEAT
# (3 rounds), WARMUP (10000, before each run), CASES (default "ok1 ok5";
# "over" adds the over-limit path), CEILING (1; 0 leaves out the do-nothing
# server, whose build needs the dev-dependencies), NO_BUILD (set: run the
# release binaries already built, without cargo), KEEP_RESULTS (a file to copy the raw
# per-run records to, JSON lines).
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-../shared/bench}
POINTS=${POINTS:-1x1,16x16,64x8}
REQUESTS=${REQUESTS:-40000}
REPEAT=${REPEAT:-3}
WARMUP=${WARMUP:-10000}
CASES=${CASES:-ok1 ok5}
SLUICE_REDIS_FLAGS=${SLUICE_REDIS_FLAGS:-}
STANDALONE_PORT=18379
CLUSTER_PORTS=(18401 18402 18403 18404 18405 18406)

for tool in h2load redis-server redis-cli; do
    command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install nghttp2-client redis-server redis-tools)" >&2; exit 1; }
done

CEILING=${CEILING:-1}
if [ -n "${NO_BUILD:-}" ]; then
    [ -x target/release/sluice ] || { echo "NO_BUILD set but target/release/sluice is missing" >&2; exit 1; }
elif [ "$CEILING" = 1 ]; then
    cargo build --release --bin sluice --example ceiling
else
    cargo build --release --bin sluice
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work" || true
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listening on $1" >&2
    return 1
}

redis() { # port [extra args...]
    local port=$1; shift
    mkdir -p "$work/$port"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$work/$port" --logfile "$work/$port/log" "$@" &
    pids+=($!)
    wait_port "127.0.0.1:$port"
}

redis "$STANDALONE_PORT"
standalone_pid=${pids[-1]}
cluster_pids=()
for p in "${CLUSTER_PORTS[@]}"; do
    redis "$p" --cluster-enabled yes --cluster-config-file "$work/$p/nodes.conf" --cluster-node-timeout 2000
    cluster_pids+=(${pids[-1]})
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${CLUSTER_PORTS[@]}") --cluster-replicas 1 --cluster-yes >/dev/null
for _ in $(seq 300); do
    ok=0
    for p in "${CLUSTER_PORTS[@]}"; do
        redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' && ok=$((ok + 1))
    done
    [ "$ok" -eq ${#CLUSTER_PORTS[@]} ] && break
    sleep 0.1
done
cluster_url="redis-cluster://127.0.0.1:${CLUSTER_PORTS[0]}?node=127.0.0.1:${CLUSTER_PORTS[1]}&node=127.0.0.1:${CLUSTER_PORTS[2]}"

serve() { # grpc-port http-port [redis-url]
    local args=(serve --config benches/load/ --grpc-addr "127.0.0.1:$1" --http-addr "127.0.0.1:$2" --admin-grpc-addr "" --log-level warn)
    # Default Redis flags: a decision the failure mode answered instead of
    # Redis is counted in sluice_store_degraded_checks_total, reported for
    # every run (a run where it is not 0 is not valid).
    # shellcheck disable=SC2206
    [ -n "${3:-}" ] && args+=(--redis-url "$3" $SLUICE_REDIS_FLAGS)
    ./target/release/sluice "${args[@]}" &
    pids+=($!)
    wait_port "127.0.0.1:$1"
}
serve 18081 18080;                                   memory_pid=${pids[-1]}
serve 18082 18083 "redis://127.0.0.1:$STANDALONE_PORT"; standalone_sluice=${pids[-1]}
serve 18084 18085 "$cluster_url";                    cluster_sluice=${pids[-1]}
ceiling_pid=""
if [ "$CEILING" = 1 ]; then
    ./target/release/examples/ceiling 127.0.0.1:18091 >/dev/null &
    pids+=($!); ceiling_pid=$!
    wait_port 127.0.0.1:18091
fi

# Commands Redis executed (every cmdstat_* but INFO, which this script
# sends), and EVALSHA alone, over the given ports.
redis_cmds() { # ports...
    local total=0 ev=0 p a e
    for p in "$@"; do
        read -r a e < <(redis-cli -p "$p" info commandstats | tr -d '\r' | awk -F'[:=,]' '
            /^cmdstat_/ && $1 != "cmdstat_info" { t += $3 } $1 == "cmdstat_evalsha" { e = $3 }
            END { print t + 0, e + 0 }')
        total=$((total + a)); ev=$((ev + e))
    done
    echo "$total $ev"
}

# Read events Redis processed (one per batch of commands read off a
# socket): the round trips Redis saw.
redis_reads() { # ports...
    local total=0 n
    for p in "$@"; do
        n=$(redis-cli -p "$p" info stats | tr -d '\r' | sed -n 's/^total_reads_processed:\([0-9]*\)/\1/p')
        total=$((total + ${n:-0}))
    done
    echo "$total"
}

# The cluster's masters (replicas count the replicated effects of every
# script as commands of their own: they are left out of the counts).
masters=(); master_pids=()
for i in "${!CLUSTER_PORTS[@]}"; do
    if redis-cli -p "${CLUSTER_PORTS[$i]}" role | head -1 | grep -q master; then
        masters+=("${CLUSTER_PORTS[$i]}"); master_pids+=("${cluster_pids[$i]}")
    fi
done

# name|addr|pid|metrics http port|Redis ports counted|Redis pids (CPU)
servers=(
    "sluice-memory|127.0.0.1:18081|$memory_pid|18080||"
    "sluice-redis|127.0.0.1:18082|$standalone_sluice|18083|$STANDALONE_PORT|$standalone_pid"
    "sluice-redis-cluster|127.0.0.1:18084|$cluster_sluice|18085|${masters[*]}|${master_pids[*]}"
)
[ -n "$ceiling_pid" ] && servers+=("ceiling|127.0.0.1:18091|$ceiling_pid|||")
if [ -n "${PEER_CMD:-}" ]; then
    $PEER_CMD >"$work/peer.log" 2>&1 &
    pids+=($!)
    wait_port "$PEER_ADDR"
    servers+=("${PEER_NAME:-peer}|$PEER_ADDR|$!||$STANDALONE_PORT|$standalone_pid")
fi

metric() { # http-port name: a counter's value on sluice's /metrics (0 if absent)
    local v
    v=$(curl -s "http://127.0.0.1:$1/metrics" | sed -n "s/^$2 \([0-9.e+]*\)$/\1/p" | head -1)
    echo "${v:-0}"
}

results=$work/results.jsonl
# One measured run of one server, case and point: h2load via rls_bench.py
# (a warm-up, then REQUESTS), with the load average, Redis's counters and
# sluice's degraded checks read before and after.
run() { # round name addr pid http-port redis-ports redis-pids case point args...
    local round=$1 name=$2 addr=$3 pid=$4 http=$5 ports=$6 rpids=$7 case=$8 point=$9; shift 9
    local extra=(--pid "server=$pid") i=0 rp
    for rp in $rpids; do extra+=(--pid "redis$i=$rp"); i=$((i + 1)); done
    [ -n "$http" ] && extra+=(--metrics-url "http://127.0.0.1:$http/metrics" \
        --metrics-match "sluice_redis_commands_total,sluice_redis_batches_total,sluice_store_degraded_checks_total")
    local c0=(0 0) reads0=0 deg0=0 c1=(0 0) reads1=0 deg1=0 load0 load1
    load0=$(cut -d' ' -f1 /proc/loadavg)
    if [ -n "$ports" ]; then read -r -a c0 < <(redis_cmds $ports); reads0=$(redis_reads $ports); fi
    [ -n "$http" ] && deg0=$(metric "$http" sluice_store_degraded_checks_total)
    rm -f "$work/run.json"
    python3 "$BENCH_DIR/rls_bench.py" --addr "$addr" --points "$point" -n "$REQUESTS" \
        --repeat 1 --warmup "$WARMUP" --pause 0.5 --json "$work/run.json" "${extra[@]}" "$@" \
        >"$work/run.md" 2>"$work/run.err" || { cat "$work/run.err" >&2; echo "rls_bench failed: $name $case $point" >&2; }
    [ -f "$work/run.json" ] || return 0
    if [ -n "$ports" ]; then read -r -a c1 < <(redis_cmds $ports); reads1=$(redis_reads $ports); fi
    [ -n "$http" ] && deg1=$(metric "$http" sluice_store_degraded_checks_total)
    load1=$(cut -d' ' -f1 /proc/loadavg)
    python3 - "$work/run.json" "$results" <<PY
import json, sys
r = json.load(open(sys.argv[1]))[0]
sent = $WARMUP + $REQUESTS
rec = dict(round=$round, server="$name", case="$case", point="$point", rc=r["rc"],
    rps=r.get("rps"), p50=r.get("p50_ms"), p99=r.get("p99_ms"), p999=r.get("p999_ms"),
    failed=r.get("failed"), b_resp=r.get("data_b_per_resp"),
    cpu={k[4:-4]: v for k, v in r.items() if k.startswith("cpu_") and k.endswith("_pct")},
    busy=r.get("machine_busy_pct"), load0=$load0, load1=$load1, sent=sent,
    has_redis=bool("$ports"), has_metrics=bool("$http"),
    cmds=${c1[0]} - ${c0[0]}, evalsha=${c1[1]} - ${c0[1]}, reads=$reads1 - $reads0,
    degraded=round($deg1 - $deg0), metrics=r.get("metrics_delta", {}))
open(sys.argv[2], "a").write(json.dumps(rec) + "\n")
print(f"round {rec['round']} {rec['server']:22} {rec['case']} {rec['point']:6} "
      f"{rec['rps'] or 0:8.0f} req/s p99 {rec['p99'] or 0:7.2f} ms degraded {rec['degraded']} "
      f"cmds/decision {rec['cmds'] / sent:.3f} load {rec['load0']}->{rec['load1']}", flush=True)
PY
}

case_args() { # case: the descriptors it sends
    case $1 in
        ok1) echo "--domain bench --fresh-key --descriptor api_key=k1" ;;
        ok5) echo "--domain bench --fresh-key --descriptor api_key=k1 --descriptor api_key=k2 --descriptor api_key=k3 --descriptor api_key=k4 --descriptor api_key=k5" ;;
        over) echo "--domain bench_over --descriptor api_key=hot" ;;
    esac
}

echo "load average at start: $(uptime)"
# Rounds interleave the servers: every round runs each case and point on
# every server back to back, so a load change on the machine hits all of
# them alike; the summary gives the median over the rounds.
for round in $(seq "$REPEAT"); do
    for case in $CASES; do
        for point in ${POINTS//,/ }; do
            for s in "${servers[@]}"; do
                IFS='|' read -r name addr pid http ports rpids <<<"$s"
                [ "$name" = ceiling ] && [ "$case" != ok1 ] && continue
                # shellcheck disable=SC2046
                run "$round" "$name" "$addr" "$pid" "$http" "$ports" "$rpids" "$case" "$point" $(case_args "$case")
            done
        done
    done
done
echo "load average at end: $(uptime)"
[ -n "${KEEP_RESULTS:-}" ] && cp "$results" "$KEEP_RESULTS"

python3 - "$results" <<'PY'
import json, statistics, sys
rs = [json.loads(line) for line in open(sys.argv[1])]
med = statistics.median


def rng(v, nd=0):
    v = [x for x in v if x is not None]
    f = f"{{:,.{nd}f}}"
    if not v:
        return "-"
    return f"{f.format(med(v))} ({f.format(min(v))}–{f.format(max(v))})" if len(v) > 1 else f.format(v[0])


servers = list(dict.fromkeys(r["server"] for r in rs))
cases = list(dict.fromkeys(r["case"] for r in rs))
points = list(dict.fromkeys(r["point"] for r in rs))
names = {"ok1": "OK path, 1 descriptor", "ok5": "OK path, 5 descriptors", "over": "over-limit path"}
rounds = max(r["round"] for r in rs)


def sel(server, case, point):
    return sorted((r for r in rs if (r["server"], r["case"], r["point"]) == (server, case, point)),
                  key=lambda r: r["round"])


print()
for case in cases:
    print(f"**{names.get(case, case)}** (median of {rounds} interleaved rounds, min–max in brackets)")
    print()
    print("| server | point | req/s | p99 ms | server CPU % | Redis CPU % | Redis commands (incl. inside scripts) / decision "
          "| EVALSHA / decision | degraded checks | load avg before→after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for point in points:
        for s in servers:
            x = sel(s, case, point)
            if not x:
                continue
            red = [sum(v for k, v in r["cpu"].items() if k.startswith("redis")) for r in x]
            has_red = any(k.startswith("redis") for k in x[0]["cpu"])
            cmds = rng([r["cmds"] / r["sent"] for r in x], 3) if x[0]["has_redis"] else "–"
            ev = rng([r["evalsha"] / r["sent"] for r in x], 3) if x[0]["has_redis"] else "–"
            deg = ", ".join(str(r["degraded"]) for r in x) if x[0]["has_metrics"] else "–"
            load = ", ".join(f"{r['load0']}→{r['load1']}" for r in x)
            bad = "" if all(r["rc"] == 0 and not r["failed"] for r in x) else " (h2load failures)"
            print(f"| {s}{bad} | {point} | {rng([r['rps'] for r in x])} | {rng([r['p99'] for r in x], 2)} | "
                  f"{rng([r['cpu'].get('server') for r in x])} | {rng(red) if has_red else '–'} | "
                  f"{cmds} | {ev} | {deg} | {load} |")
    print()


def ratio(a, b, case_a, case_b, point, key="rps"):
    xa, xb = sel(a, case_a, point), sel(b, case_b, point)
    return [p[key] / q[key] for p in xa for q in xb
            if p["round"] == q["round"] and p.get(key) and q.get(key)]


print("Ratios of req/s (p99 in brackets where it matters), each from runs of the same round:")
print()
print("| ratio | point | req/s ratio, median (min–max) |")
print("|---|---|---|")
sluices = ("sluice-redis", "sluice-redis-cluster")
peer = [s for s in servers if s not in ("sluice-memory", "ceiling") + sluices]
for point in points:
    for s in sluices:
        for case in cases:
            if case != "over" and (v := ratio(s, "sluice-memory", case, case, point)):
                print(f"| {s} / sluice-memory, {case} | {point} | {rng(v, 2)} |")
        if v := ratio(s, s, "ok5", "ok1", point):
            print(f"| {s}: 5 descriptors / 1 descriptor | {point} | {rng(v, 2)} |")
        for pr in peer:
            for case in cases:
                if v := ratio(s, pr, case, case, point):
                    print(f"| {s} / {pr}, {case} | {point} | {rng(v, 2)} |")
    for pr in peer:
        if v := ratio(pr, pr, "ok5", "ok1", point):
            print(f"| {pr}: 5 descriptors / 1 descriptor | {point} | {rng(v, 2)} |")
PY
