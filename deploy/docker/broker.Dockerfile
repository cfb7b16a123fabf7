# The offline stand-in for apache/kafka: the tansu Kafka-protocol broker the
# tests use (cargo-installed on the host, copied in), storing in SQLite
# under /var/lib/kafka/data (the same volume path as the Kafka service).
ARG BASE
FROM ${BASE}
RUN echo 'tansu:x:10002:10002:tansu:/var/lib/kafka:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'tansu:x:10002:' >> /etc/group \
 && mkdir -p /var/lib/kafka/data \
 && chown -R 10002:10002 /var/lib/kafka
COPY tansu /usr/local/bin/tansu
USER 10002:10002
WORKDIR /var/lib/kafka/data
# No curl or Kafka tools here: bash's /dev/tcp checks the listener.
HEALTHCHECK --interval=3s --timeout=3s --retries=20 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9092"]
ENTRYPOINT ["tansu"]
