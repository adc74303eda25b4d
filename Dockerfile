# syntax=docker/dockerfile:1.7
# One image for the five services: `python -m services.<name>` picks the service.
FROM python:3.11.10-slim-bookworm AS build
ENV UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
# Only the services' dependencies: no extras (the CLI and the embedded stack), no dev group.
# The code is not installed as a package; `python -m services.<name>` runs it from /app.
RUN uv sync --frozen --no-dev --no-install-project
COPY libs ./libs
COPY services ./services

FROM python:3.11.10-slim-bookworm AS runtime
# uid/gid 10001 as in k8s' securityContext. The mount points exist and belong to driftloop, so a fresh
# named volume mounted there (compose: artifacts, the per-container secrets) is writable by it.
RUN groupadd --system --gid 10001 driftloop \
    && useradd --system --uid 10001 --gid driftloop --home /app driftloop \
    && for d in /data/artifacts /run/driftloop/secrets /run/driftloop/broker /run/driftloop/postgres \
        /run/driftloop/admin /run/driftloop/ingest /run/driftloop/trainer /run/driftloop/registry \
        /run/driftloop/serving /run/driftloop/monitor; do mkdir -p "$d" && chown driftloop:driftloop "$d"; done
WORKDIR /app
COPY --from=build --chown=driftloop:driftloop /app /app
ENV PATH="/app/.venv/bin:$PATH" PYTHONUNBUFFERED=1 \
    DRIFTLOOP_ARTIFACTS_ROOT=file:///data/artifacts \
    DRIFTLOOP_INGEST_HOST=0.0.0.0 DRIFTLOOP_TRAINER_HOST=0.0.0.0 DRIFTLOOP_REGISTRY_HOST=0.0.0.0 \
    DRIFTLOOP_SERVING_HOST=0.0.0.0 DRIFTLOOP_MONITOR_HOST=0.0.0.0 DRIFTLOOP_CONSOLE_HOST=0.0.0.0
USER driftloop
ARG SERVICE=serving
ENV SERVICE=${SERVICE}
HEALTHCHECK --interval=10s --timeout=3s --retries=6 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/healthz', timeout=2)"
CMD ["sh", "-c", "exec python -m services.${SERVICE}"]
