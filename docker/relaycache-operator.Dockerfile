# The operator image (relaycache/relaycache-operator:0.1.0 by default).
# Build from the repository root:  make image-operator
#   docker build -f docker/relaycache-operator.Dockerfile -t relaycache/relaycache-operator:0.1.0 .
#
# Builder: `cargo build --release -p relaycache-operator`. Runtime: distroless
# "cc" (glibc, CA certificates, no shell) as UID 65532; the chart runs it
# with a read-only root filesystem.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p relaycache-operator \
 && install -D -m 0755 target/release/relaycache-operator /out/relaycache-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/relaycache-operator /usr/local/bin/relaycache-operator
# 8081 health and metrics, 9443 the admission webhook (HTTPS).
EXPOSE 8081 9443
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/relaycache-operator"]
CMD ["run"]
