# syntax=docker/dockerfile:1
# The sidecar image. The same image also runs the demo services and the compose load
# generator (other entrypoints); see compose/docker-compose.yml and docs/compose.md.
#
#   docker build -t sidecar:0.1.0 .
#   docker run -v $PWD/sidecar.yaml:/etc/sidecar/sidecar.yaml:ro sidecar:0.1.0
#
# Config: /etc/sidecar/sidecar.yaml (a default that needs only SIDECAR_SERVICE__NAME and
# SIDECAR_SERVICE__PORT is baked in). Every key can be overridden by environment:
# SIDECAR_<SECTION>__<KEY> (e.g. SIDECAR_DISCOVERY__CONSUL__ADDRESS), CONSUL_HTTP_ADDR,
# CONSUL_HTTP_TOKEN, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER(_ARG).

ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm
# The build stage compiles the data path with mypyc: the full image of the same Python has gcc
# and the headers. Only the venv leaves it, so the runtime image carries no compiler.
ARG BUILD_IMAGE=python:3.11.10-bookworm

# ---------------------------------------------------------------- build: a self-contained venv
FROM ${BUILD_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/sidecar
WORKDIR /src
# Dependencies first, so editing the code does not re-download them; then the build-only tools.
COPY pyproject.toml README.md setup.py native-modules.txt ./
RUN mkdir -p sidecar demo_services \
 && touch sidecar/__init__.py demo_services/__init__.py \
 && /opt/sidecar/bin/pip install . \
 && /opt/sidecar/bin/pip uninstall -y sidecar \
 && /opt/sidecar/bin/pip install "mypy==2.4.1" "types-PyYAML>=6.0" "setuptools>=68" wheel
COPY sidecar ./sidecar
COPY demo_services ./demo_services
# Compiled like `make native` (README, "Compiled data path"); if mypyc fails, the image runs
# the same sources as pure Python and the build log says so. pip gives every installed file
# the install time, so the extensions are touched to be newer than their sources (an older
# build is ignored by sidecar/native.py). The build tools then leave the venv.
RUN (SIDECAR_MYPYC=1 /opt/sidecar/bin/pip install --no-deps --no-build-isolation . \
     || (echo "warning: mypyc build failed: the data path runs as pure Python" \
         && /opt/sidecar/bin/pip install --no-deps .)) \
 && /opt/sidecar/bin/pip uninstall -y mypy ast-serialize librt mypy_extensions pathspec types-PyYAML \
 && find /opt/sidecar/lib -path '*/site-packages/sidecar/*' -name '*.so' -exec touch {} + \
 && /opt/sidecar/bin/python -m compileall -q /opt/sidecar/lib \
 && /opt/sidecar/bin/sidecar version

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="sidecar" \
      org.opencontainers.image.description="Observability and resilience sidecar for Python microservices"
RUN groupadd --system --gid 10001 sidecar \
 && useradd --system --uid 10001 --gid sidecar --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin sidecar
COPY --from=build /opt/sidecar /opt/sidecar
COPY compose/sidecar/image-default.yaml /etc/sidecar/sidecar.yaml
ENV PATH=/opt/sidecar/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SIDECAR_HEALTHCHECK_URL=http://127.0.0.1:15090/healthz
USER 10001:10001
# inbound, outbound (loopback inside the pod), admin (/metrics /healthz /readyz)
EXPOSE 15000 15001 15090
# The slim image has no curl: probe the admin /healthz with the standard library.
# SIDECAR_HEALTHCHECK_URL points it elsewhere (e.g. a demo app's own /healthz).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['SIDECAR_HEALTHCHECK_URL'], timeout=2)"]
# Exec form: `sidecar` is PID 1 and gets SIGTERM itself (maintenance → drain → deregister).
STOPSIGNAL SIGTERM
ENTRYPOINT ["sidecar"]
CMD ["run", "-c", "/etc/sidecar/sidecar.yaml"]
