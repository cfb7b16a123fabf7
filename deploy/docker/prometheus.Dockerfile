# The offline stand-in for prom/prometheus: the Prometheus server binary from
# Debian's `prometheus` package (installed on the host by the test command),
# on the debootstrap base, run as nobody like the upstream image.
ARG BASE
FROM ${BASE}
COPY prometheus /usr/bin/prometheus
RUN mkdir -p /prometheus /etc/prometheus && chown -R 65534:65534 /prometheus
USER 65534:65534
WORKDIR /prometheus
# /-/ready over bash's /dev/tcp (no curl or wget in the base).
HEALTHCHECK --interval=3s --timeout=3s --retries=20 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /-/ready HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
