# syntax=docker/dockerfile:1
#
# esindexer container image.
#   docker build -t esindexer .                 # the service (target "runtime", the default)
#   docker build --target demo -t esindexer-demo .   # + ZODB/RelStorage and the demo writer
#
# Multi-stage so the runtime image carries a ready virtualenv and nothing used to build it.
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a virtualenv holding esindexer and its runtime dependencies ----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for the optional C extensions (esindexer/convert/_scan_c.c, _reader_c.c,
# esindexer/documents/_shape_c.c, esindexer/source/_copy_c.c, esindexer/objects/_edges_c.c;
# the slim image has the
# Python headers but no compiler). Build stage only: the runtime
# stage copies the finished virtualenv. Without it the install still succeeds and the
# slower pure-Python scan is used.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
WORKDIR /src
# Only what `pip install .` needs: a change to tests or docs does not rebuild this layer.
COPY pyproject.toml setup.py README.md MANIFEST.in ./
COPY esindexer ./esindexer
# The guides `esindexer docs` prints are shipped inside the package (setup.py).
COPY docs ./docs
RUN /opt/venv/bin/pip install .

# --- demo-build: the same virtualenv plus what the demo writer needs ------------------
# psycopg2-binary (already installed for esindexer) provides the `psycopg2` module
# RelStorage's PostgreSQL driver imports, so no compiler or libpq-dev is needed here;
# RelStorage[postgresql] would ask for the source build of psycopg2 instead.
FROM build AS demo-build
RUN /opt/venv/bin/pip install "ZODB>=6.0" "RelStorage>=4.1"

# --- runtime: the service, as an unprivileged user --------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ESINDEXER_METRICS_HOST=0.0.0.0 \
    ESINDEXER_METRICS_PORT=9650
RUN groupadd --system --gid 10001 esindexer \
 && useradd --system --uid 10001 --gid esindexer --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin esindexer
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 9650
# slim images have no curl: ask /readyz with the standard library. Not ready (503)
# means behind and not progressing, or a dependency down: see docs/operations.md.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('ESINDEXER_METRICS_PORT', '9650'), timeout=4).status == 200 else 1)"]
ENTRYPOINT ["esindexer"]
CMD ["run"]

# --- demo: writes sample ZODB content for the compose demo (deploy/demo/writer.py) ----
FROM runtime AS demo
COPY --from=demo-build /opt/venv /opt/venv
COPY deploy/demo /opt/esindexer-demo
# The writer is not a server: the inherited /readyz check does not apply.
HEALTHCHECK NONE
ENTRYPOINT ["python", "/opt/esindexer-demo/writer.py"]
CMD []

# The last stage is what a plain `docker build .` produces: keep it the service.
FROM runtime
