# syntax=docker/dockerfile:1
#
# tokex container image.
#
#   docker build -t tokex:0.1.0 .
#   docker run --rm -p 8080:8080 -v $PWD/config.example.yaml:/etc/tokex/config.yaml:ro \
#     -e TOKEX_CLIENT_SECRET=... tokex:0.1.0
#
# The runtime image is distroless (glibc + libgcc, no shell, no package
# manager) and runs as the non-root user 65532. tokex needs no OpenSSL: TLS is
# rustls with the bundled webpki roots (add private CAs with `ca_file:`).

############################ build ############################
FROM rust:1-bookworm AS builder
WORKDIR /build

# Only what the binary needs: the manifest, the lockfile and the sources.
COPY Cargo.toml Cargo.lock ./
COPY src ./src

# BuildKit cache mounts keep the registry and the target dir between builds;
# the binary is copied out of the cached target dir into the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked \
 && install -D -m 0755 target/release/tokex /out/tokex

# Smoke test inside the builder: the binary starts and parses its CLI.
RUN /out/tokex --version

############################ runtime ############################
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="tokex" \
      org.opencontainers.image.description="Token exchange gateway (RFC 8693): swaps a caller's broad bearer token for a short-lived, down-scoped one per route" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/tokex /usr/local/bin/tokex

# 65532 is distroless's "nonroot"; numeric so Kubernetes runAsNonRoot can verify it.
USER 65532:65532

# 8080: the gateway listener (listen.address). 9901: the admin listener
# (/healthz /readyz /metrics) -- keep it off the public network.
EXPOSE 8080 9901

# Log as JSON by default in containers; override with -e TOKEX_LOG_FORMAT=text.
ENV TOKEX_LOG=info \
    TOKEX_LOG_FORMAT=json

# SIGTERM: stop accepting, drain in-flight requests for runtime.shutdown_grace, exit 0.
STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/local/bin/tokex"]
CMD ["run", "-c", "/etc/tokex/config.yaml"]
