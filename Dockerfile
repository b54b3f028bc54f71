# syntax=docker/dockerfile:1
#
# One image definition, one target per service (needs BuildKit, the default since Docker 23):
#   docker build --target receiver -t orderflow-receiver .
#   docker build --target worker   -t orderflow-worker   .
# scripts/check-deploy.sh lints this file and runs the same cargo build command.

ARG RUST_VERSION=1.95

# --- build: both binaries, release, exactly the versions in Cargo.lock ---------------------------
FROM rust:${RUST_VERSION}-slim-trixie AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the crates.io downloads and compiled dependencies between builds, so a
# source change only recompiles the workspace crates. The target directory is a cache mount, so
# the binaries are copied out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p receiver -p worker \
    && install -D -m 0755 -t /out target/release/receiver target/release/worker

# --- runtime: glibc + libgcc only (distroless cc, same Debian release as the builder), no shell --
FROM gcr.io/distroless/cc-debian13:nonroot AS runtime
COPY --from=builder /out/ /usr/local/bin/
# distroless's "nonroot" user (65532), numeric so runtimes can verify it is not root.
USER 65532:65532
ENV LOG_FORMAT=json

# --- worker: consumes the orders queue; HTTP on 8081 for /health, /stats, /metrics ---------------
FROM runtime AS worker
ENV PORT=8081
EXPOSE 8081
# No curl in the image: the binary GETs its own /health and exits 0 or 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/worker", "--check-health"]
ENTRYPOINT ["/usr/local/bin/worker"]

# --- receiver (default target): HTTP API on 8080 --------------------------------------------------
FROM runtime AS receiver
ENV PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/receiver", "--check-health"]
ENTRYPOINT ["/usr/local/bin/receiver"]
