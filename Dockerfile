# The sluice image: one statically linked binary and the CA certificates,
# FROM scratch: no shell, no package manager, nothing else to patch.
#
#   docker build -t REGISTRY/sluice:TAG .        (or: podman build ...)
#
# scripts/image.sh builds the same image without a registry: it builds
# the binary on the host, lays it out with the same scripts/image-rootfs.sh
# and passes it in with --build-arg BINARY_FROM.
#
# Runs as uid/gid 65532. The only writable path it needs is the declared
# volume /var/lib/sluice (the default SQLite key store and its generated
# secrets); everything else may be mounted read-only.
#
# Name resolution: the binary is linked statically against glibc (>= 2.34
# has its `files` and `dns` lookups built in, so no NSS modules are
# needed); /etc/nsswitch.conf below pins `hosts: files dns`, and the
# container runtime supplies /etc/hosts and /etc/resolv.conf (Kubernetes:
# search domains and ndots), so service names such as
# redis-0.redis.data.svc resolve as in any other pod.

# Debian 12 (glibc 2.36), the toolchain the project builds with.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
# Where the final stage takes /out from: the `build` stage, or an image
# holding a binary built elsewhere (scripts/image.sh).
ARG BINARY_FROM=build

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
ENV CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN cargo build --release --locked --target x86_64-unknown-linux-gnu --bin sluice \
 && scripts/image-rootfs.sh /out target/x86_64-unknown-linux-gnu/release/sluice

FROM ${BINARY_FROM} AS binary

FROM scratch
# Everything root's and read-only to the process, but its state volume.
COPY --from=binary /out/rootfs/ /
COPY --from=binary --chown=65532:65532 /out/volume/ /var/lib/
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /var/lib/sluice
VOLUME ["/var/lib/sluice"]
# http (/healthz, /readyz, /metrics), grpc (ShouldRateLimit), admin.
EXPOSE 8080 8081 8082
ENTRYPOINT ["/sluice"]
CMD ["serve", "--config", "/etc/sluice/rules"]
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="Rate-limit decision service for Envoy and Istio" \
      org.opencontainers.image.licenses="Apache-2.0"
