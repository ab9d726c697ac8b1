# The agentstream image: one image for every role, chosen by the command.
#
#   docker build -t agentstream:local .
#   docker run --rm -p 8080:8080 agentstream:local            # `up`: the embedded default
#   docker run --rm agentstream:local worker agent            # a worker against Kafka + Redis
#
# The package is installed into a virtualenv in a build stage and only that virtualenv is
# copied into the runtime stage, so the image carries no build tools and no source tree.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/agentstream
# README.md is optional for the build (the wildcard keeps COPY from failing without it).
COPY pyproject.toml README.md* ./
COPY schemas ./schemas
COPY topics ./topics
COPY handlers ./handlers
COPY agents ./agents
COPY ingress ./ingress
COPY cli ./cli
RUN /opt/agentstream/bin/pip install . \
 && /opt/agentstream/bin/agentstream --help > /dev/null

FROM python:3.11-slim
# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without a runAsUser.
RUN groupadd --system --gid 10001 agentstream \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin agentstream
COPY --from=build /opt/agentstream /opt/agentstream
ENV PATH=/opt/agentstream/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AGENTSTREAM_INGRESS__HOST=0.0.0.0
WORKDIR /tmp
USER 10001:10001
# 8080: the ingress (and `up`); 9100: a worker's /healthz, /readyz and /metrics.
EXPOSE 8080 9100
# SIGTERM stops fetching, drains in-flight work (AGENTSTREAM_RUNTIME__DRAIN_TIMEOUT_S),
# commits and leaves the group: give the container longer than the drain timeout to stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["agentstream"]
CMD ["up"]
