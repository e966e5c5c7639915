#!/usr/bin/env bash
# Load benchmark of whole servers over gRPC, side by side in one run:
# sluice (memory store), the do-nothing ceiling server on the same stack
# (examples/ceiling.rs), and optionally a peer server you built yourself.
#
# Uses the neutral h2load driver in ../shared/bench (rls_bench.py); needs
# h2load (Debian: nghttp2-client). Prints Markdown tables.
#
#   scripts/bench.sh                      # sluice + ceiling
#   PEER_NAME=limitador PEER_CMD="/path/to/limitador-server --rls-port 18083 ... limits.yaml" \
#   PEER_ADDR=127.0.0.1:18083 scripts/bench.sh
#
# Knobs: POINTS (default 1x1,16x16,64x8), REQUESTS (default 100000),
# REPEAT (default 3). The peer must serve domain `bench` with a huge limit
# on descriptor api_key and domain `bench_over` with a limit of 1, like
# benches/load/.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-../shared/bench}
POINTS=${POINTS:-1x1,16x16,64x8}
REQUESTS=${REQUESTS:-100000}
REPEAT=${REPEAT:-3}
SLUICE_ADDR=127.0.0.1:18081
CEILING_ADDR=127.0.0.1:18091

command -v h2load >/dev/null || { echo "h2load not found: apt-get install nghttp2-client" >&2; exit 1; }

cargo build --release --bin sluice --example ceiling

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() {
    local addr=$1
    for _ in $(seq 100); do
        if python3 - "$addr" <<'PY' 2>/dev/null; then return 0; fi
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
socket.create_connection((host, int(port)), timeout=0.2).close()
PY
        sleep 0.1
    done
    echo "nothing listening on $addr" >&2
    return 1
}

./target/release/sluice serve --config benches/load/ --grpc-addr "$SLUICE_ADDR" \
    --http-addr 127.0.0.1:18080 --admin-grpc-addr "" --log-level warn &
pids+=($!); sluice_pid=$!
./target/release/examples/ceiling "$CEILING_ADDR" >/dev/null &
pids+=($!); ceiling_pid=$!
wait_port "$SLUICE_ADDR"; wait_port "$CEILING_ADDR"

servers=("sluice=$SLUICE_ADDR=$sluice_pid" "ceiling=$CEILING_ADDR=$ceiling_pid")
if [ -n "${PEER_CMD:-}" ]; then
    $PEER_CMD >/dev/null 2>&1 &
    pids+=($!)
    wait_port "$PEER_ADDR"
    servers+=("${PEER_NAME:-peer}=$PEER_ADDR=$!")
fi

run() {
    local name=$1 addr=$2 pid=$3 label=$4; shift 4
    echo
    echo "### $name, $label"
    python3 "$BENCH_DIR/rls_bench.py" --addr "$addr" --points "$POINTS" -n "$REQUESTS" \
        --repeat "$REPEAT" --pid "server=$pid" --label "$name $label" "$@"
}

# Interleave servers within each case so machine noise hits them alike.
for case in ok1 ok5 over; do
    for s in "${servers[@]}"; do
        IFS== read -r name addr pid <<<"$s"
        case $case in
            ok1) run "$name" "$addr" "$pid" "OK path, 1 descriptor" \
                    --domain bench --descriptor api_key=k1 --fresh-key ;;
            ok5) [ "$name" = ceiling ] && continue
                 run "$name" "$addr" "$pid" "OK path, 5 descriptors" --domain bench --fresh-key \
                    --descriptor api_key=k1 --descriptor api_key=k2 --descriptor api_key=k3 \
                    --descriptor api_key=k4 --descriptor api_key=k5 ;;
            over) [ "$name" = ceiling ] && continue
                  run "$name" "$addr" "$pid" "over-limit path" \
                    --domain bench_over --descriptor api_key=hot ;;
        esac
    done
done
