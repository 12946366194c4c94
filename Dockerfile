# Kalkan in a container: the runtime only (no test or benchmark extras), run as an unprivileged
# user with the service paths. packaging/compose.yaml puts it in front of a WordPress container.
# Build: docker build -t kalkan .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
# A C compiler for the build stage only: setup.py compiles the hot path with mypyc.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY src ./src
RUN python -m venv /opt/kalkan \
    && /opt/kalkan/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && /opt/kalkan/bin/pip uninstall --yes pip

FROM python:3.11-slim-bookworm
COPY --from=build /opt/kalkan /opt/kalkan
RUN useradd --system --user-group --home-dir /var/lib/kalkan --shell /usr/sbin/nologin kalkan \
    && install -d -o kalkan -g kalkan -m 0750 /var/lib/kalkan /var/cache/kalkan /var/log/kalkan \
    && install -d -m 0755 /etc/kalkan
# --service defaults: config /etc/kalkan/kalkan.yaml, state /var/lib/kalkan, cache /var/cache/kalkan.
ENV KALKAN_SERVICE=1 PYTHONUNBUFFERED=1 PATH=/opt/kalkan/bin:$PATH
USER kalkan
VOLUME ["/var/lib/kalkan", "/var/cache/kalkan"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9181/healthz', timeout=2)"]
ENTRYPOINT ["/opt/kalkan/bin/kalkan"]
CMD ["serve", "--config", "/etc/kalkan/kalkan.yaml"]
