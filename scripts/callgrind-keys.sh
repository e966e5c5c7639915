#!/usr/bin/env bash
# Instructions per request of ValidateKey and ext_authz Check on a warm key
# cache, counted by callgrind (repeatable where timings on a shared VM are
# not).
#
# Starts a release sluice under valgrind's callgrind on a fresh PostgreSQL
# database (SLUICE_BENCH_POSTGRES_URL, as scripts/bench-keys.sh), creates a
# plan and a key, warms the cache, then for each call sends N and 2N
# requests with h2load (1 connection, 4 streams), zeroing the counters
# before and dumping them after each batch: the per-request cost is
# (cost of 2N - cost of N) / N, so connection set-up cancels out. Prints a
# table; the dumps stay in $OUT (default /tmp/sluice-callgrind) for
# callgrind_annotate.
#
# SLUICE_BIN: a binary to profile instead of this tree's release build.
# Needs: cargo, valgrind, h2load (nghttp2-client), python3, PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

PG=${SLUICE_BENCH_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
N=${N:-2000}
OUT=${OUT:-/tmp/sluice-callgrind}
GRPC=127.0.0.1:18681
HTTP=127.0.0.1:18680
ADMIN=127.0.0.1:18682
for tool in valgrind callgrind_control callgrind_annotate h2load; do
    command -v $tool >/dev/null || { echo "$tool missing (apt-get install valgrind nghttp2-client)" >&2; exit 1; }
done
if [ -z "${SLUICE_BIN:-}" ]; then
    cargo build --release -q
fi
BIN=${SLUICE_BIN:-target/release/sluice}
work=$(mktemp -d)
mkdir -p "$OUT"
rm -f "$OUT"/cg.*
vpid=""
db="sluice_callgrind_$$"
base=${PG%/*}
cleanup() {
    [ -n "$vpid" ] && kill "$vpid" 2>/dev/null
    wait 2>/dev/null || true
    rm -rf "$work"
    psql "$PG" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
}
trap cleanup EXIT
export SLUICE_JWT_SECRET=bench-admin-secret-bench-admin-secret
export SLUICE_KEY_SECRET=bench-key-secret-bench-key-secret-0000
psql "$PG" -q -c "CREATE DATABASE $db" >/dev/null
printf 'domain: bench\ndescriptors: []\n' > "$work/config.yaml"

valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" \
    "$BIN" serve --config "$work/config.yaml" --grpc-addr $GRPC --http-addr $HTTP \
    --admin-grpc-addr $ADMIN --database-url "$base/$db" --failed-validations-per-minute 0 \
    --log-level warn 2>"$OUT/valgrind.log" &
vpid=$!
for _ in $(seq 300); do
    (exec 3<>/dev/tcp/127.0.0.1/${GRPC#*:}) 2>/dev/null && break
    sleep 0.2
done
export SLUICE_ADDR=http://$ADMIN SLUICE_TOKEN=$("$BIN" token --scope all --ttl 10m)
"$BIN" plans create bench --limit 1000000000/hour >/dev/null
secret=$("$BIN" keys create --name bench --owner bench --plan bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
scripts/keys-bodies.py "$secret" "$work"

VK=sluice.v1.KeyService/ValidateKey
CHECK=envoy.service.auth.v3.Authorization/Check
send() { # path body n
    h2load -n "$3" -c 1 -m 4 -H 'content-type: application/grpc' -H 'te: trailers' \
        -d "$2" "http://$GRPC/$1" | grep -q "$3 succeeded" || { echo "h2load: not every request succeeded" >&2; exit 1; }
}
# Warm-up: the key is cached, the connections' buffers grown.
send $VK "$work/body" 500
send $CHECK "$work/check" 500
measure() { # label path body n
    callgrind_control -z $vpid >/dev/null
    send "$2" "$3" "$4"
    callgrind_control -d "$1" $vpid >/dev/null
}
for round in 1 2; do
    n=$((N * round))
    measure "vk$n" $VK "$work/body" $n
    measure "check$n" $CHECK "$work/check" $n
done
kill "$vpid"; wait "$vpid" 2>/dev/null || true; vpid=""

total() { # trigger label -> instructions in that dump
    local f
    f=$(grep -l "^desc: Trigger: dump $1\$" "$OUT"/cg.* | head -1)
    callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}
echo "| call | instructions per request |"
echo "|---|---|"
for call in vk check; do
    a=$(total "$call$N"); b=$(total "$call$((2 * N))")
    label=$([ $call = vk ] && echo "ValidateKey {key, cost 1}" || echo "ext_authz Check (Envoy-shaped request)")
    echo "| $label | $(( (b - a) / N )) |"
done
echo "dumps: $OUT (callgrind_annotate --inclusive=yes <file>)"
