#!/usr/bin/env bash
# Lays out the image's files under OUT: OUT/rootfs (the static sluice
# binary, the CA certificates, nsswitch.conf, passwd/group for uid 65532,
# /tmp), all root's, and OUT/volume/sluice, the state volume the
# Dockerfile copies to /var/lib/sluice owned by 65532. Used by the
# Dockerfile's build stage and scripts/image.sh, so both images hold
# exactly the same files.
#
#   scripts/image-rootfs.sh OUT BINARY [CA_BUNDLE]
set -euo pipefail
out=$1
bin=$2
ca=${3:-/etc/ssl/certs/ca-certificates.crt}

# A static binary: no interpreter, no shared libraries.
if readelf -l "$bin" | grep -q 'INTERP'; then
    echo "$bin is dynamically linked; build with -C target-feature=+crt-static" >&2
    exit 1
fi
[ -s "$ca" ] || { echo "no CA bundle at $ca (apt-get install ca-certificates)" >&2; exit 1; }

rm -rf "$out"
root=$out/rootfs
mkdir -p "$root/etc/ssl/certs" "$root/var/lib" "$root/tmp" "$out/volume/sluice"
install -m 0755 "$bin" "$root/sluice"
install -m 0644 "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
# glibc's built-in lookups, in this order; the runtime mounts /etc/hosts
# and /etc/resolv.conf.
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:sluice:/var/lib/sluice:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
chmod 0644 "$root/etc/nsswitch.conf" "$root/etc/passwd" "$root/etc/group"
chmod 1777 "$root/tmp"
chmod 0755 "$out/volume/sluice"
