#!/usr/bin/env bash
# ValidateKey throughput and latency, warm cache vs cache misses, in one run.
#
# Starts a release sluice on a fresh PostgreSQL database (the local server,
# SLUICE_BENCH_POSTGRES_URL), creates a plan and a key with the CLI, then
# drives sluice.v1.KeyService/ValidateKey with h2load over loopback:
#   1. warm cache, at a fixed 10 000 req/s (the target's load) and flat out;
#   2. cache off (--key-cache-size 0): every call hashes the key and reads
#      PostgreSQL, at 10 000 req/s offered and flat out.
# Latency percentiles come from h2load's per-request log. Prints a table.
#
# Needs: cargo, h2load (nghttp2-client), python3, a PostgreSQL server.
set -euo pipefail
cd "$(dirname "$0")/.."

PG=${SLUICE_BENCH_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
N=${N:-100000}
GRPC=127.0.0.1:18581
HTTP=127.0.0.1:18580
ADMIN=127.0.0.1:18582
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

command -v h2load >/dev/null || { echo "h2load missing: apt-get install nghttp2-client" >&2; exit 1; }
cargo build --release -q
BIN=target/release/sluice
export SLUICE_JWT_SECRET=bench-admin-secret-bench-admin-secret
export SLUICE_KEY_SECRET=bench-key-secret-bench-key-secret-0000
db="sluice_bench_$$"
base=${PG%/*}
psql "$PG" -q -c "CREATE DATABASE $db" >/dev/null
trap 'cleanup; psql "$PG" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null' EXIT
printf 'domain: bench\ndescriptors: []\n' > "$work/config.yaml"

start() {
    "$BIN" serve --config "$work/config.yaml" --grpc-addr $GRPC --http-addr $HTTP \
        --admin-grpc-addr $ADMIN --database-url "$base/$db" --failed-validations-per-minute 0 --log-level warn "$@" &
    pid=$!
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/${GRPC#*:}) 2>/dev/null && return
        sleep 0.1
    done
    echo "sluice did not start" >&2; exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }

start
export SLUICE_ADDR=http://$ADMIN SLUICE_TOKEN=$("$BIN" token --scope all --ttl 10m)
"$BIN" plans create bench --limit 1000000000/hour >/dev/null
secret=$("$BIN" keys create --name bench --owner bench --plan bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')

# The gRPC-framed ValidateKeyRequest {key: secret, cost: 1}.
python3 - "$secret" "$work/body" <<'PY'
import struct, sys
key = sys.argv[1].encode()
msg = b"\x0a" + bytes([len(key)]) + key + b"\x10\x01"
open(sys.argv[2], "wb").write(b"\x00" + struct.pack(">I", len(msg)) + msg)
PY

run() { # label, extra h2load args...
    local label=$1; shift
    h2load -n 5000 -c 4 -m 4 -H 'content-type: application/grpc' -H 'te: trailers' \
        -d "$work/body" "http://$GRPC/sluice.v1.KeyService/ValidateKey" >/dev/null
    h2load -n "$N" "$@" -H 'content-type: application/grpc' -H 'te: trailers' \
        -d "$work/body" --log-file "$work/log" \
        "http://$GRPC/sluice.v1.KeyService/ValidateKey" > "$work/out"
    python3 - "$label" "$work/out" "$work/log" <<'PY'
import re, sys
label, out, log = sys.argv[1:]
text = open(out).read()
rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1)
ok = re.search(r"(\d+) succeeded", text).group(1)
d = sorted(int(l.split("\t")[2]) for l in open(log) if l.count("\t") >= 2 and l.split("\t")[1] != "-1")
q = lambda p: d[min(len(d) - 1, int(p * len(d)))] / 1000
print(f"| {label} | {float(rps):,.0f} | {q(0.50):.3f} | {q(0.99):.3f} | {q(0.999):.3f} | {ok} |", end="")
PY
    # h2load does not read gRPC trailers: one real call says what the
    # answers were (grpcurl from .venv, installed by scripts/test.sh).
    local code=unchecked
    if [ -x .venv/bin/grpcurl ]; then
        code=$(.venv/bin/grpcurl -plaintext -d "{\"key\":\"$secret\"}" "$GRPC" \
            sluice.v1.KeyService/ValidateKey | python3 -c 'import json,sys; print(json.load(sys.stdin).get("code","?"))')
    fi
    echo " $code |"
}

echo "| ValidateKey (PostgreSQL key store, cost 1) | req/s | p50 ms | p99 ms | p99.9 ms | succeeded | answer after |"
echo "|---|---|---|---|---|---|---|"
run "warm cache, 10k req/s offered (10 conns x 1000/s)" -c 10 -m 1 --rps 1000
run "warm cache, flat out (16 conns x 16 streams)" -c 16 -m 16
stop
start --key-cache-size 0
run "cache off: PostgreSQL per call, 10k req/s offered" -c 10 -m 1 --rps 1000
run "cache off: PostgreSQL per call, flat out (16x16)" -c 16 -m 16
stop
