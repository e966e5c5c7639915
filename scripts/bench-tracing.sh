#!/usr/bin/env bash
# What tracing costs: a release sluice on the memory store, driven with
# ShouldRateLimit by h2load (the neutral driver in ../shared/bench,
# rls_bench.py), three ways in one run:
#
#   off    no OTLP endpoint (no tracing layer, no span on the request path)
#   1.0    --otel-endpoint to a local sink, --trace-sampling 1.0 (every
#          request a sampled SERVER span, exported)
#   0.01   the same at --trace-sampling 0.01
#
# The sink (examples/otlp_sink.rs) accepts OTLP/gRPC exports, counts the
# spans and discards them, so the figures are sluice's cost, not a
# collector's. h2load sends no trace context: every request is a new root,
# sampled at the given ratio. Prints one Markdown table per mode
# (rls_bench.py's) and a side-by-side summary: req/s, p50, p99 (medians
# over the repeats), spans the sink received, and sluice's own count of
# spans dropped (export queue full).
#
#   scripts/bench-tracing.sh                     # 100000 requests, 3 repeats, 16x16
#   N=2000 REPEAT=1 scripts/bench-tracing.sh     # a smoke run (seconds)
#
# Knobs: N (requests per run, default 100000), REPEAT (default 3), POINTS
# (h2load connections x streams, default 16x16), MODES (default
# "off 1.0 0.01"), BENCH_DIR (default ../shared/bench), NO_BUILD (set: run
# the release binaries already built). Needs h2load (Debian:
# nghttp2-client). Run it on a quiet machine; the modes run one after the
# other, so noise between them shows up as a difference.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-../shared/bench}
N=${N:-100000}
REPEAT=${REPEAT:-3}
POINTS=${POINTS:-16x16}
MODES=${MODES:-off 1.0 0.01}
SLUICE_ADDR=127.0.0.1:18181
HTTP_ADDR=127.0.0.1:18180
SINK_ADDR=127.0.0.1:18317

command -v h2load >/dev/null || { echo "h2load not found: apt-get install nghttp2-client" >&2; exit 1; }
[ -f "$BENCH_DIR/rls_bench.py" ] || { echo "no $BENCH_DIR/rls_bench.py (set BENCH_DIR)" >&2; exit 1; }

if [ -n "${NO_BUILD:-}" ]; then
    for b in target/release/sluice target/release/examples/otlp_sink; do
        [ -x "$b" ] || { echo "NO_BUILD set but $b is missing" >&2; exit 1; }
    done
else
    cargo build --release --bin sluice --example otlp_sink
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
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

sink_spans() { cut -d' ' -f1 "$work/sink.count" 2>/dev/null || echo 0; }

./target/release/examples/otlp_sink "$SINK_ADDR" "$work/sink.count" >"$work/sink.log" 2>&1 &
pids+=($!)
wait_port "$SINK_ADDR"

for mode in $MODES; do
    args=(serve --config benches/load/ --grpc-addr "$SLUICE_ADDR" --http-addr "$HTTP_ADDR"
          --admin-grpc-addr "" --log-level warn)
    env_vars=()
    if [ "$mode" != off ]; then
        args+=(--otel-endpoint "http://$SINK_ADDR" --trace-sampling "$mode")
        env_vars=(OTEL_EXPORTER_OTLP_PROTOCOL=grpc)
    fi
    before=$(sink_spans)
    env "${env_vars[@]}" ./target/release/sluice "${args[@]}" &
    sluice_pid=$!
    pids+=("$sluice_pid")
    wait_port "$SLUICE_ADDR"
    echo
    echo "## tracing $mode"
    python3 "$BENCH_DIR/rls_bench.py" --addr "$SLUICE_ADDR" --points "$POINTS" -n "$N" \
        --repeat "$REPEAT" --warmup "$(( N < 10000 ? N : 10000 ))" --pid "sluice=$sluice_pid" \
        --label "sluice memory store, tracing $mode" --json "$work/$mode.json" \
        --domain bench --descriptor api_key=k1 --fresh-key
    dropped=$(python3 - "$HTTP_ADDR" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
v = [l.split()[-1] for l in text.splitlines()
     if l.startswith('sluice_trace_spans_total{outcome="dropped"}')]
print(int(float(v[0])) if v else 0)
PY
)
    # Stop sluice (it flushes its queue on SIGTERM), then read the sink.
    kill -TERM "$sluice_pid"
    wait "$sluice_pid" 2>/dev/null || true
    sleep 0.5
    echo "$(( $(sink_spans) - before )) $dropped" >"$work/$mode.spans"
done

echo
echo "## Side by side (medians over $REPEAT run(s) of $N requests at $POINTS)"
echo
python3 - "$work" $MODES <<'PY'
import json, statistics, sys
work, modes = sys.argv[1], sys.argv[2:]
def med(rs, k):
    v = [r[k] for r in rs if isinstance(r.get(k), (int, float))]
    return statistics.median(v) if v else float("nan")
base = None
print("| tracing | req/s | vs off | p50 ms | p99 ms | sluice CPU% | spans received | spans dropped |")
print("|---|---|---|---|---|---|---|---|")
for m in modes:
    rs = json.load(open(f"{work}/{m}.json"))
    spans, dropped = open(f"{work}/{m}.spans").read().split()
    rps = med(rs, "rps")
    if m == "off":
        base = rps
    rel = f"{100 * rps / base:.1f}%" if base else "-"
    print(f"| {m} | {rps:.0f} | {rel} | {med(rs, 'p50_ms'):.2f} | {med(rs, 'p99_ms'):.2f} "
          f"| {med(rs, 'cpu_sluice_pct'):.0f} | {spans} | {dropped} |")
PY
