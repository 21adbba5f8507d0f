# tlsproxy container image: a small, non-root runtime with no build tools.
#   docker build -t tlsproxy .
#   docker run --rm -v /path/to/ca:/etc/tlsproxy/ca:ro -p 127.0.0.1:3306:3306 tlsproxy \
#       --listen 0.0.0.0:3306 --allow-non-loopback --upstream db.example.com:3306 \
#       --ssl-ca /etc/tlsproxy/ca/ca.pem --admin-listen 0.0.0.0:9090
# The same steps run in tests/integration/test_packaging.py (in a fresh venv), since CI has no Docker engine.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tlsproxy ./tlsproxy
RUN python -m venv /opt/tlsproxy \
    && /opt/tlsproxy/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/tlsproxy/bin/pip install --no-cache-dir . \
    && /opt/tlsproxy/bin/tlsproxy --version

FROM python:3.11-slim-bookworm
COPY --from=build /opt/tlsproxy /opt/tlsproxy
ENV PATH=/opt/tlsproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The CA bundle (and a client certificate, if any) is mounted here, e.g. from a Kubernetes Secret.
VOLUME ["/etc/tlsproxy/ca"]
USER 65532:65532
EXPOSE 3306 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/liveness', timeout=2)"]
ENTRYPOINT ["tlsproxy"]
CMD ["--help"]
