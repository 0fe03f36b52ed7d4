# nibble CPU image: builds the binary and bakes in the bundled SmolLM2 model.
# docker build -t nibble . && docker run --rm -p 8000:8000 nibble
# (serves the OpenAI API on port 8000; `docker run --rm nibble generate -m /models/... -p "Hello"` still works)
FROM debian:12-slim AS build
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      build-essential cmake ninja-build pkg-config python3 python3-pip ca-certificates \
      nlohmann-json3-dev libspdlog-dev libfmt-dev libcli11-dev libsentencepiece-dev libre2-dev \
      libgtest-dev libgmock-dev libbenchmark-dev prometheus-cpp-dev libboost-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DNIBBLE_CUDA=OFF \
      -DNIBBLE_BUILD_TESTS=OFF -DNIBBLE_BUILD_BENCH=OFF \
    && cmake --build build -j"$(nproc)" \
    && PIP_BREAK_SYSTEM_PACKAGES=1 NIBBLE_MODEL_CACHE=/models scripts/get-model

FROM debian:12-slim
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libspdlog1.10 libfmt9 libsentencepiece0 libre2-9 libprometheus-cpp-core1.0 \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 nibble
COPY --from=build /src/build/cli/nibble /usr/local/bin/nibble
COPY --from=build /models /models
USER nibble
EXPOSE 8000
# SIGTERM (docker stop, Kubernetes) drains in-flight requests, then exits 0.
ENTRYPOINT ["nibble"]
CMD ["serve", "-m", "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "--host", "0.0.0.0", "--port", "8000"]
