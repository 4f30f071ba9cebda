# syntax=docker/dockerfile:1
# One image for every Python program of the sandbox (config server, user, catalog, order, gateway, and the CLI);
# each docker-compose.yml service picks its program with its `command` (e.g. `python -m catalog`).
#
#   docker build -t msa-sandbox:dev .        # or: docker compose build
#
# The dependencies are exactly requirements/main.lock (hash-checked, wheels only, so the image needs no compiler);
# our own packages are source trees on the path, as `make install` puts them (no build step, no editable install).

# The one pinned base: the builder and the runtime must be the same Python, because the venv's interpreter is a
# symlink to the base image's /usr/local/bin/python3.11.
FROM python:3.11.13-slim-bookworm AS base

# ---- builder: a venv with the locked runtime dependencies --------------------------------------------------------
FROM base AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    UV_NO_CACHE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never
COPY requirements/bootstrap.lock requirements/main.lock /tmp/requirements/
# uv itself comes hash-checked from bootstrap.lock (as in the Makefile) and stays in this stage. `uv pip sync`
# installs exactly the lock: --require-hashes refuses anything unpinned, --no-build refuses sdists (a package
# without a wheel fails the build here instead of pulling in a compiler), and no index is configured: the
# default one, as for `make install`.
RUN python -m pip install --no-cache-dir --require-hashes -r /tmp/requirements/bootstrap.lock \
 && uv venv --python /usr/local/bin/python3.11 /opt/venv \
 && uv pip sync --python /opt/venv/bin/python --require-hashes --no-build --compile-bytecode \
        /tmp/requirements/main.lock
# Our packages are source trees (the Makefile's SRC_DIRS): a .pth in site-packages puts them on sys.path for every
# interpreter of the venv, whatever the working directory, as `make install` does for local mode.
RUN printf '%s\n' \
        /app/libs/msa_kit/src \
        /app/discovery/src \
        /app/config-server/src \
        /app/gateway/src \
        /app/services/user/src \
        /app/services/catalog/src \
        /app/services/order/src \
        /app/cli/src \
        /app/faultproxy/src \
        /app/probe/src \
        /app/console/src \
        > /opt/venv/lib/python3.11/site-packages/msa-sandbox.pth

# ---- runtime: the slim base, the venv, the sources; no compiler, no pip cache, no uv ---------------------------
FROM base AS runtime
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="msa-sandbox" \
      org.opencontainers.image.description="msa-sandbox's Python programs (config server, user, catalog, order, gateway, probe, console): pick one with the command, e.g. python -m catalog" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="python:3.11.13-slim-bookworm"

# A fixed, non-root uid/gid (10001), so bind mounts and volumes can be chown'ed to it from outside. -l: no lastlog
# entry (a sparse file that grows with the uid).
RUN groupadd --system --gid 10001 msa \
 && useradd --system --no-log-init --uid 10001 --gid msa --home-dir /app --shell /usr/sbin/nologin msa \
 && install -d -o msa -g msa -m 0750 /var/lib/msa

# HOST: in a container a program must listen on the container's interface (Runtime's default is loopback).
# MSA_VAR_DIR: runtime state (SQLite files, config snapshots, span files) in a dir the program owns; the sources
# stay root-owned and read-only to it. PYTHONDONTWRITEBYTECODE: the bytecode is compiled below, at build time.
ENV PATH="/opt/venv/bin:${PATH}" \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    MSA_VAR_DIR=/var/lib/msa

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The Makefile's SRC_DIRS, each at the path the .pth names. The config repo is not copied: configuration comes
# from outside the image (docker-compose.yml mounts ./config-repo into the config server).
COPY libs/msa_kit/src libs/msa_kit/src
COPY discovery/src discovery/src
COPY config-server/src config-server/src
COPY gateway/src gateway/src
COPY services/user/src services/user/src
COPY services/catalog/src services/catalog/src
COPY services/order/src services/order/src
COPY cli/src cli/src
COPY faultproxy/src faultproxy/src
COPY probe/src probe/src
COPY console/src console/src
# Compiled once here: the non-root user cannot write __pycache__ under /app, and each start would recompile.
# The import check fails the build if the .pth or a dependency is wrong, rather than the first container start.
RUN python -m compileall -q -j 0 /app \
 && python -c "import msa_kit.healthcheck, msa_config_server, msa_gateway, msa_probe, msa_console, user, catalog, order"

USER 10001:10001

# Every program answers GET /health on its own PORT; the kit's checker needs only the standard library (the slim
# image has no curl) and starts in ~20 ms. docker-compose.yml repeats it with its own timings.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 CMD ["python", "-m", "msa_kit.healthcheck"]

# No EXPOSE: each program listens on the PORT its compose service gives it (8888, 8101, 8201, ... 8080).
# No useful default program either: say how to pick one, and fail, rather than start something by surprise.
CMD ["python", "-c", "raise SystemExit('msa-sandbox image: give the program to run, e.g. python -m msa_config_server | user | catalog | order | msa_gateway (see docker-compose.yml)')"]
