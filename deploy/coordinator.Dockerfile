# syntax=docker/dockerfile:1
#
# The coordinator image: `lgaf-coordinator` alone. It never links libtorch, so neither
# Python nor CUDA is needed to build or run it. Build from the repository root:
#
#   docker build -f deploy/coordinator.Dockerfile -t lgaf-coordinator .

# ---- build ---------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build

WORKDIR /src
COPY . .
# protoc comes from protoc-bin-vendored (proto/build.rs), so no protobuf compiler is
# installed. The target folder is a cache, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p lgaf-coordinator --bin lgaf-coordinator \
    && install -D -m 0755 -t /out/bin target/release/lgaf-coordinator

# ---- runtime -------------------------------------------------------------------------------
# Distroless `cc` on the build image's Debian release (12), so the binary meets the glibc
# (2.36) it was linked against; it needs only libc, libm and libgcc_s (TLS is rustls with
# ring and aws-lc-rs, no OpenSSL). The image has CA certificates for an https S3 endpoint,
# no shell and no package manager. Not a static musl build: that needs the musl target and
# a musl C toolchain for ring and aws-lc-sys in the build image, and musl's allocator is
# slow under tonic's many small allocations, for an image only about 20 MB smaller.
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=build /out/bin/lgaf-coordinator /usr/local/bin/lgaf-coordinator

# nonroot, by number so that Kubernetes' runAsNonRoot can check it. Its home is writable
# (the default --store, runs-store, is relative to it).
USER 65532:65532
WORKDIR /home/nonroot
# gRPC (and grpc.health.v1) with --listen 0.0.0.0:50051; Prometheus with
# --metrics-listen 0.0.0.0:9464.
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/lgaf-coordinator"]
