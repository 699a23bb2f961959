# syntax=docker/dockerfile:1
#
# The worker image: `lgaf-worker` (one rank of a coordinated run) and the `lgaf` tool, on
# libtorch 2.11.0 for CUDA 13.0. Build from the repository root:
#
#   docker build -f deploy/worker.Dockerfile -t lgaf-worker .
#
# The same image trains on the CPU (`--device cpu`, no GPU or driver needed: nothing links
# libcuda) or on a GPU (`--device cuda:0`, with the NVIDIA container toolkit giving the
# container the host's driver).

# ---- build: the binaries, against the torch wheel's libtorch ------------------------------
FROM rust:1.95-bookworm AS build

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# torch-sys takes libtorch from the torch wheel (LIBTORCH_USE_PYTORCH=1): it runs `python`
# from PATH (the venv's, as VIRTUAL_ENV is set) for the headers, the library folder and the
# C++ ABI. The pin is requirements.txt's (deploy/tests/images.rs checks they agree).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv=3.11.2-1+b1 \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LIBTORCH_USE_PYTORCH=1
# The default Linux wheel of torch 2.11.0 on PyPI is the CUDA 13.0 build (torch.version.cuda
# '13.0'); it brings the CUDA libraries as nvidia-* wheels (nvidia-cuda-runtime 13.0.96,
# cublas, cudnn-cu13, nccl-cu13, nvshmem-cu13, cusparselt-cu13, ...).
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir torch==2.11.0

# What the runtime image needs of that venv, laid out as in site-packages so that the
# libraries' own RPATHs ($ORIGIN/../../nvidia/<pkg>/lib) still find each other:
# /opt/libtorch/torch/lib (libtorch, libc10, libtorch_cuda, ...; not libtorch_python, which
# needs libpython) and /opt/libtorch/nvidia/<pkg>/lib (no headers).
RUN site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && mkdir -p /opt/libtorch/torch \
    && cp -a "$site/torch/lib" /opt/libtorch/torch/lib \
    && rm -f /opt/libtorch/torch/lib/libtorch_python.so \
    && for lib in "$site"/nvidia/*/lib; do \
           pkg="$(basename "$(dirname "$lib")")"; \
           mkdir -p "/opt/libtorch/nvidia/$pkg"; \
           cp -a "$lib" "/opt/libtorch/nvidia/$pkg/lib"; \
       done \
    && test -e /opt/libtorch/torch/lib/libtorch_cuda.so \
    && test -e /opt/libtorch/nvidia/nccl/lib/libnccl.so.2

WORKDIR /src
COPY . .
# protoc comes from protoc-bin-vendored (proto/build.rs); the target folder is a cache, so
# the binaries are copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin lgaf-worker --bin lgaf \
    && install -D -m 0755 -t /out/bin target/release/lgaf-worker target/release/lgaf

# ---- runtime -------------------------------------------------------------------------------
# CUDA 13.0 (update 2, whose runtime is the wheel's 13.0.96), the CUDA of torch 2.11.0's
# default wheel. The `base` flavour (the CUDA runtime, the forward-compatibility driver
# package and NVIDIA_* variables for the container toolkit), not `runtime` or `cudnn`: the
# wheels' libraries copied below are the ones libtorch was built and tested with, and the
# larger flavours would only add second copies of cuBLAS, NCCL and friends. Ubuntu 24.04's
# glibc (2.39) and libstdc++ are newer than bookworm's (2.36), which the binaries were
# linked against.
FROM nvidia/cuda:13.0.2-base-ubuntu24.04

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

COPY --from=build /opt/libtorch /opt/libtorch
COPY --from=build /out/bin/ /usr/local/bin/

# The binaries' RUNPATH names the build stage's venv, which is not here: libtorch is found
# through LD_LIBRARY_PATH, its CUDA libraries through their RPATHs and this path both.
# NCCL is loaded at run time (crates/collective), from LGAF_NCCL_LIB. The base image sets
# NVIDIA_VISIBLE_DEVICES=all and NVIDIA_DRIVER_CAPABILITIES=compute,utility for the toolkit.
ENV LD_LIBRARY_PATH=/opt/libtorch/torch/lib:/opt/libtorch/nvidia/cu13/lib:/opt/libtorch/nvidia/cudnn/lib:/opt/libtorch/nvidia/nccl/lib:/opt/libtorch/nvidia/nvshmem/lib:/opt/libtorch/nvidia/cusparselt/lib:/usr/local/nvidia/lib:/usr/local/nvidia/lib64 \
    LGAF_NCCL_LIB=/opt/libtorch/nvidia/nccl/lib/libnccl.so.2

# Fails the build if a shared library of the binaries is missing; then a user of its own
# (a numeric UID, so that Kubernetes' runAsNonRoot can check it).
RUN missing="$(ldd /usr/local/bin/lgaf-worker /usr/local/bin/lgaf | grep 'not found' || true)" \
    && if [ -n "$missing" ]; then echo "missing libraries:"; echo "$missing"; exit 1; fi \
    && groupadd --gid 65532 lgaf \
    && useradd -l --uid 65532 --gid 65532 --create-home --home-dir /home/lgaf lgaf

USER 65532:65532
WORKDIR /home/lgaf
# The Prometheus endpoint when started with --metrics-listen 0.0.0.0:9464; the collective's
# listener port is whatever --collective-bind says (29500 in deploy/compose.yaml).
EXPOSE 9464
ENTRYPOINT ["lgaf-worker"]
