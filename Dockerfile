# syntax=docker/dockerfile:1
#
# compartment-auditd container image: the binary only, on distroless (glibc and
# libgcc, no shell, no package manager), running as the unprivileged user 65532.
#
#   docker build -t compartment/compartment-auditd:0.1.0 .
#   docker run --rm -e COMPARTMENT_DATABASE_URL=postgres://… -p 127.0.0.1:9464:9464 \
#     compartment/compartment-auditd:0.1.0
#
# docs/deployment.md describes the image, the compose example and the Helm chart.

# Any stable Rust at least as new as Cargo.toml's rust-version (and the dependencies' own).
ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The cache mounts keep downloaded crates and build artefacts between builds, so a
# source change neither downloads nor rebuilds the dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin compartment-auditd \
    && install -D -m 0755 target/release/compartment-auditd /out/usr/local/bin/compartment-auditd
# The sink's parent and default directory, owned by the runtime user: a named
# volume mounted there starts with this owner and mode, and the daemon can create
# the directory itself when /var/lib/compartment is the mount point.
RUN install -d -m 0755 /out/var/lib/compartment \
    && install -d -m 0700 /out/var/lib/compartment/audit-logs

# cc: glibc and libgcc_s, which the Rust binary links dynamically; nonroot: UID 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="compartment-auditd" \
      org.opencontainers.image.description="Compartment's audit-log sidecar: audit events to NDJSON files, retention cleanup, audit-event API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/usr/local/bin/compartment-auditd /usr/local/bin/compartment-auditd
COPY --from=build --chown=65532:65532 /out/var/lib/compartment /var/lib/compartment
USER 65532:65532
# In a container the network namespace is the boundary: listen on every address of
# it, so that a published port, probes and Prometheus reach /healthz, /readyz,
# /metrics and /v1 (the daemon's own default is loopback).
ENV COMPARTMENT_AUDIT_HTTP_ADDR=0.0.0.0:9464
EXPOSE 9464
# SIGTERM drains (finishes the batch, fsyncs) and exits 0; SIGHUP reloads.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/compartment-auditd"]
CMD ["run"]
