# The mlstack image without a registry: the runtime stage of the repository's
# Dockerfile, on a base made by debootstrap, with the binary built on the
# host copied in. scripts/compose-images.sh prepares the context:
#   mlstack                       the host's binary (the same Debian bookworm glibc)
#   SmolLM2-135M-Instruct.Q4_1.gguf, shakespeare.jsonl
ARG BASE
FROM ${BASE}
RUN echo 'mlstack:x:10001:10001:mlstack:/data:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'mlstack:x:10001:' >> /etc/group \
 && mkdir -p /data/kv /data/parquet /data/checkpoints /data/traces /opt/mlstack/models /opt/mlstack/data \
 && chown -R 10001:10001 /data
COPY mlstack /usr/local/bin/mlstack
COPY SmolLM2-135M-Instruct.Q4_1.gguf /opt/mlstack/models/
COPY shakespeare.jsonl /opt/mlstack/data/
ENV MLSTACK_MODEL=/opt/mlstack/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    MLSTACK_LOG_FORMAT=json \
    RUST_LOG=info
USER 10001:10001
WORKDIR /data
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=5 \
  CMD ["mlstack", "health"]
ENTRYPOINT ["mlstack"]
CMD ["--help"]
