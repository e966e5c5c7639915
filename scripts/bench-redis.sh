#!/usr/bin/env bash
# Load benchmark of sluice with its counters in Redis, side by side in one
# run: a local standalone Redis and a local Redis Cluster (3 masters + 3
# replicas, all on this machine), the memory store, the do-nothing ceiling,
# and optionally a peer server you built yourself (its own Redis setup is
# yours to give in PEER_CMD).
#
# Reports, per case and load point: throughput and latency (h2load via
# ../shared/bench/rls_bench.py), sluice and Redis CPU, and Redis commands
# and round trips per decision (INFO commandstats and total_reads_processed
# on every Redis node, against the requests sent), and for sluice the
# checks answered by the failure mode (sluice_store_degraded_checks_total):
# a run where that is not 0 measured the failure mode, not Redis.
#
# sluice runs with default flags (SLUICE_REDIS_FLAGS adds some, e.g.
# "--redis-batch-wait-us 50").
#
#   scripts/bench-redis.sh
#   PEER_NAME=limitador PEER_ADDR=127.0.0.1:18181 \
#   PEER_CMD="/path/to/limitador-server -b 127.0.0.1 -p 18181 -B 127.0.0.1 -P 18180 limits.yaml redis redis://127.0.0.1:18379" \
#   scripts/bench-redis.sh
#
# Knobs: POINTS (default 1x1,16x16,64x8), REQUESTS (default 100000), REPEAT (3),
# WARMUP (20000, before each point), CASES (default "ok1 ok5 over").
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-../shared/bench}
POINTS=${POINTS:-1x1,16x16,64x8}
REQUESTS=${REQUESTS:-100000}
REPEAT=${REPEAT:-3}
WARMUP=${WARMUP:-20000}
CASES=${CASES:-ok1 ok5 over}
SLUICE_REDIS_FLAGS=${SLUICE_REDIS_FLAGS:-}
STANDALONE_PORT=18379
CLUSTER_PORTS=(18401 18402 18403 18404 18405 18406)

for tool in h2load redis-server redis-cli; do
    command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install nghttp2-client redis-server redis-tools)" >&2; exit 1; }
done

cargo build --release --bin sluice --example ceiling

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
    # A timeout long enough that no decision falls back to the failure mode
    # under this load (sluice_store_degraded_checks_total is reported).
    [ -n "${3:-}" ] && args+=(--redis-url "$3" --redis-timeout 200)
    ./target/release/sluice "${args[@]}" &
    pids+=($!)
    wait_port "127.0.0.1:$1"
}
serve 18081 18080;                                   memory_pid=${pids[-1]}
serve 18082 18083 "redis://127.0.0.1:$STANDALONE_PORT"; standalone_sluice=${pids[-1]}
serve 18084 18085 "$cluster_url";                    cluster_sluice=${pids[-1]}
./target/release/examples/ceiling 127.0.0.1:18091 >/dev/null &
pids+=($!); ceiling_pid=$!
wait_port 127.0.0.1:18091

evalsha_calls() { # ports...
    local total=0 n
    for p in "$@"; do
        n=$(redis-cli -p "$p" info commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\).*/\1/p')
        total=$((total + ${n:-0}))
    done
    echo "$total"
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

servers=(
    "sluice-memory|127.0.0.1:18081|$memory_pid|18080|"
    "sluice-redis|127.0.0.1:18082|$standalone_sluice|18083|$STANDALONE_PORT"
    "sluice-redis-cluster|127.0.0.1:18084|$cluster_sluice|18085|${CLUSTER_PORTS[*]}"
    "ceiling|127.0.0.1:18091|$ceiling_pid||"
)
if [ -n "${PEER_CMD:-}" ]; then
    $PEER_CMD >/dev/null 2>&1 &
    pids+=($!)
    wait_port "$PEER_ADDR"
    servers+=("${PEER_NAME:-peer}|$PEER_ADDR|$!||$STANDALONE_PORT")
fi

metric() { # http-port name: a counter's value on sluice's /metrics (0 if absent)
    local v
    v=$(curl -s "http://127.0.0.1:$1/metrics" | sed -n "s/^$2 \([0-9.e+]*\)$/\1/p" | head -1)
    echo "${v:-0}"
}

run() { # name addr pid http-port redis-ports label args...
    local name=$1 addr=$2 pid=$3 http=$4 ports=$5 label=$6; shift 6
    local extra=(--pid "server=$pid")
    case $name in
        sluice-redis) extra+=(--pid "redis=$standalone_pid") ;;
        sluice-redis-cluster) for i in 0 1 2; do extra+=(--pid "redis$i=${cluster_pids[$i]}"); done ;;
        ceiling|sluice-memory) ;;
        *) extra+=(--pid "redis=$standalone_pid") ;;
    esac
    [ -n "$http" ] && extra+=(--metrics-url "http://127.0.0.1:$http/metrics" \
        --metrics-match "sluice_rpc_decisions_total,sluice_redis_commands_total,sluice_redis_checks_total,sluice_store_degraded_checks_total,sluice_store_cached_denials_total")
    local point
    for point in ${POINTS//,/ }; do
        local before=0 reads_before=0 degraded_before=0
        [ -n "$ports" ] && before=$(evalsha_calls $ports) && reads_before=$(redis_reads $ports)
        [ -n "$http" ] && degraded_before=$(metric "$http" sluice_store_degraded_checks_total)
        echo
        echo "### $name, $label, $point"
        python3 "$BENCH_DIR/rls_bench.py" --addr "$addr" --points "$point" -n "$REQUESTS" \
            --repeat "$REPEAT" --warmup "$WARMUP" --label "$name $label" "${extra[@]}" "$@"
        local sent=$((WARMUP + REPEAT * REQUESTS))
        if [ -n "$ports" ]; then
            local after reads
            after=$(evalsha_calls $ports); reads=$(redis_reads $ports)
            echo "Redis during $point (all nodes, warm-up included, $sent requests): EVALSHA calls $((after - before))," \
                "socket reads (round trips) $((reads - reads_before));" \
                "EVALSHA per decision $(awk -v a=$((after - before)) -v n=$sent 'BEGIN{printf "%.3f", a/n}')"
        fi
        if [ -n "$http" ]; then
            echo "sluice_store_degraded_checks_total during $point: $(awk -v a="$(metric "$http" sluice_store_degraded_checks_total)" -v b="$degraded_before" 'BEGIN{printf "%d", a-b}')"
        fi
    done
}

for case in $CASES; do
    for s in "${servers[@]}"; do
        IFS='|' read -r name addr pid http ports <<<"$s"
        case $case in
            ok1) run "$name" "$addr" "$pid" "$http" "$ports" "OK path, 1 descriptor" \
                    --domain bench --descriptor api_key=k1 --fresh-key ;;
            ok5) [ "$name" = ceiling ] && continue
                 run "$name" "$addr" "$pid" "$http" "$ports" "OK path, 5 descriptors" --domain bench --fresh-key \
                    --descriptor api_key=k1 --descriptor api_key=k2 --descriptor api_key=k3 \
                    --descriptor api_key=k4 --descriptor api_key=k5 ;;
            over) [ "$name" = ceiling ] && continue
                  run "$name" "$addr" "$pid" "$http" "$ports" "over-limit path" \
                    --domain bench_over --descriptor api_key=hot ;;
        esac
    done
done
