# syntax=docker/dockerfile:1
# The NVR server: `docker run -v nvr-data:/data -p 127.0.0.1:8080:8080 nvr-archive` records into the volume and
# serves the API; `docker run … nvr-archive user create --role admin …` makes the first admin; `--help` lists the
# commands. No ffmpeg package is needed: PyAV's wheels bundle FFmpeg's libraries.

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# Installed the way the README installs it (a venv, then `pip install .`), only at /opt/nvr instead of ./.venv.
RUN python3 -m venv /opt/nvr
COPY . /src
RUN /opt/nvr/bin/pip install /src

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 nvr \
 && useradd --system --uid 10001 --gid nvr --home-dir /data --no-create-home --shell /usr/sbin/nologin nvr \
 && mkdir /data && chown nvr:nvr /data
COPY --from=build /opt/nvr /opt/nvr
ENV PATH=/opt/nvr/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVR_DATA_DIR=/data \
    NVR_API_HOST=0.0.0.0
USER 10001:10001
WORKDIR /data
# The database (SQLite by default), the default volume and the demo cache live here (docs/configuration.md).
VOLUME /data
# 8080: HTTP API (all interfaces inside the container: the container's own network is the boundary; publish it only
# behind TLS). 8554: demo RTSP server of `serve --demo` (set NVR_DEMO_RTSP_HOST=0.0.0.0 to reach it).
EXPOSE 8080 8554
# Unhealthy when the database does not answer or an active camera has no working recorder.
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 CMD ["nvr", "health"]
ENTRYPOINT ["nvr"]
CMD ["serve"]
