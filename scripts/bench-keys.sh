#!/usr/bin/env bash
# ValidateKey and ext_authz Check throughput and latency, warm cache vs
# cache misses, in one run.
#
# Starts a release sluice on a fresh PostgreSQL database (the local server,
# SLUICE_BENCH_POSTGRES_URL), creates a plan and a key with the CLI, then
# drives sluice.v1.KeyService/ValidateKey with h2load over loopback:
#   1. warm cache, at a fixed 10 000 req/s (the target's load) and flat out;
#   2. cache off (--key-cache-size 0): every call hashes the key and reads
#      PostgreSQL, at 10 000 req/s offered and flat out.
# and envoy.service.auth.v3.Authorization/Check (Envoy's ext_authz) the same
# way, each Check run right after the ValidateKey run it compares with: a
# CheckRequest as Envoy sends it (source address, the usual request
# headers, the key in `authorization: Bearer`, the route's
# context_extensions naming the domain), answered OK with identity headers.
# Latency percentiles come from h2load's per-request log, sluice's CPU time
# per 1000 requests (user + system, from /proc) from the run. Prints a table.
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
# SLUICE_BIN: a sluice binary to measure instead of this tree's release
# build (to put two commits side by side on the same machine).
if [ -z "${SLUICE_BIN:-}" ]; then
    cargo build --release -q
fi
BIN=${SLUICE_BIN:-target/release/sluice}
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
# sluice's CPU time so far (user + system, clock ticks), for the CPU per
# 1000 requests column: what the kernel spends on its sockets included.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

start
export SLUICE_ADDR=http://$ADMIN SLUICE_TOKEN=$("$BIN" token --scope all --ttl 10m)
"$BIN" plans create bench --limit 1000000000/hour >/dev/null
secret=$("$BIN" keys create --name bench --owner bench --plan bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')

scripts/keys-bodies.py "$secret" "$work"
run() { # label, path, body, extra h2load args...
    local label=$1 path=$2 body=$3; shift 3
    h2load -n 5000 -c 4 -m 4 -H 'content-type: application/grpc' -H 'te: trailers' \
        -d "$body" "http://$GRPC/$path" >/dev/null
    local load0 load1
    load0=$(cut -d' ' -f1 /proc/loadavg)
    # h2load appends to an existing log file: without this, every run's
    # percentiles would include the runs before it.
    rm -f "$work/log"
    local cpu0 cpu1
    cpu0=$(cpu_ticks)
    h2load -n "$N" "$@" -H 'content-type: application/grpc' -H 'te: trailers' \
        -d "$body" --log-file "$work/log" \
        "http://$GRPC/$path" > "$work/out"
    cpu1=$(cpu_ticks)
    load1=$(cut -d' ' -f1 /proc/loadavg)
    python3 - "$label" "$work/out" "$work/log" "$cpu0" "$cpu1" "$(getconf CLK_TCK)" "$N" <<'PY'
import re, sys
label, out, log, cpu0, cpu1, hz, n = sys.argv[1:]
cpu = (int(cpu1) - int(cpu0)) * 1000 / int(hz) * 1000 / int(n)
text = open(out).read()
rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1)
ok = re.search(r"(\d+) succeeded", text).group(1)
d = sorted(int(l.split("\t")[2]) for l in open(log) if l.count("\t") >= 2 and l.split("\t")[1] != "-1")
q = lambda p: d[min(len(d) - 1, int(p * len(d)))] / 1000
print(f"| {label} | {float(rps):,.0f} | {q(0.50):.3f} | {q(0.99):.3f} | {q(0.999):.3f} | {cpu:.1f} | {ok} |", end="")
PY
    # h2load does not read gRPC trailers: one real call says what the
    # answers were (grpcurl from .venv, installed by scripts/test.sh).
    local code=unchecked
    if [ -x .venv/bin/grpcurl ]; then
        case $path in
            *ValidateKey) code=$(.venv/bin/grpcurl -plaintext -d "{\"key\":\"$secret\"}" "$GRPC" \
                sluice.v1.KeyService/ValidateKey | python3 -c 'import json,sys; print(json.load(sys.stdin).get("code","?"))') ;;
            *) code=$(.venv/bin/grpcurl -plaintext -import-path proto -proto envoy/service/auth/v3/external_auth.proto \
                -d "{\"attributes\":{\"request\":{\"http\":{\"method\":\"GET\",\"path\":\"/\",\"headers\":{\"authorization\":\"Bearer $secret\"}}},\"contextExtensions\":{\"sluice.domain\":\"bench\"}}}" \
                "$GRPC" envoy.service.auth.v3.Authorization/Check | python3 -c 'import json,sys; r=json.load(sys.stdin); print("OK" if not r.get("status",{}).get("code") and "okResponse" in r else "not OK")') ;;
        esac
    fi
    echo " $code | $load0 → $load1 |"
}

VK=sluice.v1.KeyService/ValidateKey
CHECK=envoy.service.auth.v3.Authorization/Check
echo "load average at start: $(uptime)"
echo "| call (PostgreSQL key store, cost 1) | req/s | p50 ms | p99 ms | p99.9 ms | sluice CPU ms per 1000 req | succeeded | answer after | load avg before → after |"
echo "|---|---|---|---|---|---|---|---|---|"
run "ValidateKey, warm cache, 10k req/s offered (10 conns x 1000/s)" $VK "$work/body" -c 10 -m 1 --rps 1000
run "Check, warm cache, 10k req/s offered (10 conns x 1000/s)" $CHECK "$work/check" -c 10 -m 1 --rps 1000
run "ValidateKey, warm cache, flat out (16 conns x 16 streams)" $VK "$work/body" -c 16 -m 16
run "Check, warm cache, flat out (16 conns x 16 streams)" $CHECK "$work/check" -c 16 -m 16
run "ValidateKey, warm cache, 10k req/s offered (again)" $VK "$work/body" -c 10 -m 1 --rps 1000
run "Check, warm cache, 10k req/s offered (again)" $CHECK "$work/check" -c 10 -m 1 --rps 1000
run "ValidateKey, warm cache, flat out (again)" $VK "$work/body" -c 16 -m 16
run "Check, warm cache, flat out (again)" $CHECK "$work/check" -c 16 -m 16
curl -s "http://$HTTP/metrics" | grep '^sluice_authz_checks_total' | sed 's/^/# /' || true
stop
start --key-cache-size 0
run "ValidateKey, cache off: PostgreSQL per call, 10k req/s offered" $VK "$work/body" -c 10 -m 1 --rps 1000
run "Check, cache off: PostgreSQL per call, 10k req/s offered" $CHECK "$work/check" -c 10 -m 1 --rps 1000
run "ValidateKey, cache off: PostgreSQL per call, flat out (16x16)" $VK "$work/body" -c 16 -m 16
run "Check, cache off: PostgreSQL per call, flat out (16x16)" $CHECK "$work/check" -c 16 -m 16
stop
echo "load average at end: $(uptime)"
