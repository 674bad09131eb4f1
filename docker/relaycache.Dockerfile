# The relaycache proxy image (relaycache/relaycache:0.1.0 by default).
# Build from the repository root:  make image
#   docker build -f docker/relaycache.Dockerfile -t relaycache/relaycache:0.1.0 .
#
# Builder: the same release build as `make release`. Runtime: distroless
# "cc" (glibc, CA certificates, no shell, no package manager) as UID 65532.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p relaycache \
 && install -D -m 0755 target/release/relaycache /out/relaycache

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/relaycache /usr/local/bin/relaycache
# 8787 API traffic, 9787 admin (health, metrics), 3320 cluster gRPC.
EXPOSE 8787 9787 3320
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/relaycache"]
# With no --config the proxy runs its embedded default (single mode); in
# Kubernetes the operator passes `serve --config /etc/relaycache/relaycache.yaml`.
CMD ["serve"]
