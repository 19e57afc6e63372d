# kyc-sync: the CDC consumer as a container image.
#
#   docker build -t kyc-sync .                              # DuckDB only
#   docker build -t kyc-sync --build-arg EXTRAS=snowflake .  # with the Snowflake writer
#   docker run --rm -e KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS=broker:9092 kyc-sync   # = kyc-sync run
#
# Settings come from KYC_SYNC_* environment variables (docs/configuration.md), or from a
# TOML file mounted into the container and named by KYC_SYNC_CONFIG. The DuckDB file lives in
# /data (mount a volume there). Metrics, /healthz and /readyz are served on port 9464.

ARG PYTHON_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

# Optional extras of the package, e.g. "snowflake".
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY consumer ./consumer
COPY batcher ./batcher
COPY warehouse ./warehouse
COPY schemas ./schemas

# Only the runtime dependencies (no [dev]), into a virtualenv copied whole into the final stage,
# at the exact versions of constraints.txt (python -m tools.constraints --write refreshes it).
RUN python -m venv /opt/kyc-sync \
    && /opt/kyc-sync/bin/pip install --constraint constraints.txt --upgrade pip \
    && /opt/kyc-sync/bin/pip install --constraint constraints.txt ".${EXTRAS:+[$EXTRAS]}"

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}

ARG UID=10001
RUN groupadd --gid "${UID}" kyc \
    && useradd --uid "${UID}" --gid kyc --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin kyc \
    && mkdir -p /data \
    && chown kyc:kyc /data

COPY --from=build /opt/kyc-sync /opt/kyc-sync

ENV PATH=/opt/kyc-sync/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/data \
    KYC_SYNC_DUCKDB__PATH=/data/kyc.duckdb \
    KYC_SYNC_METRICS__HOST=0.0.0.0 \
    KYC_SYNC_METRICS__PORT=9464 \
    KYC_SYNC_LOG_FORMAT=json

USER kyc
WORKDIR /data
EXPOSE 9464

# /healthz answers while `kyc-sync run` is alive (the image has no curl: Python asks).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('KYC_SYNC_METRICS__PORT', '9464') + '/healthz', timeout=4)"]

# SIGTERM: kyc-sync flushes the open window and commits within run.shutdown_timeout_s (30 s);
# give the container that long (docker stop -t 40, compose stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["kyc-sync"]
CMD ["run"]
