#!/usr/bin/env bash
# Builds the sluice image with podman (or docker) without any registry:
# the static binary is built here, laid out by scripts/image-rootfs.sh,
# and handed to the Dockerfile's final stage (--build-arg BINARY_FROM),
# which is the same stage `docker build .` ends with.
#
#   scripts/image.sh [TAG]          default TAG: localhost/sluice:dev
#   ENGINE=docker scripts/image.sh  use docker instead of podman
#
# Needs: cargo, podman (apt-get install podman) and glibc >= 2.34 (files
# and DNS lookups built into the static libc; Debian 12 has 2.36).
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:-localhost/sluice:dev}
engine=${ENGINE:-podman}
target=x86_64-unknown-linux-gnu

glibc=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
if [ "$(printf '%s\n2.34\n' "$glibc" | sort -V | head -1)" != 2.34 ]; then
    echo "glibc $glibc: a static binary needs >= 2.34 to resolve names without NSS modules" >&2
    exit 1
fi

echo "==> cargo build --release --target $target (static)" >&2
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --release --locked --target "$target" --bin sluice

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
scripts/image-rootfs.sh "$ctx/out" "target/$target/release/sluice"
printf 'FROM scratch\nCOPY out/ /out/\n' > "$ctx/Containerfile"
binary_image=localhost/sluice-binary:build
echo "==> $engine build $tag" >&2
"$engine" build -q -t "$binary_image" -f "$ctx/Containerfile" "$ctx" >/dev/null
# The context holds nothing the final stage reads; the unused build stage
# (which would need the Rust image) is skipped.
"$engine" build -q --build-arg BINARY_FROM="$binary_image" -t "$tag" -f Dockerfile "$ctx" >/dev/null
"$engine" rmi -f "$binary_image" >/dev/null 2>&1 || true
echo "$tag"
