# trading-readiness exporter and healer image for docker-compose.yml (both services use it).
# The bot's own code is NOT in here: the bot root is bind-mounted read-only at run time.
FROM python:3.11-slim-bookworm

# systemctl only: the healer restarts host units through the host's D-Bus socket (mounted by
# docker-compose.yml); no systemd runs inside the container.
RUN apt-get update \
    && apt-get install -y --no-install-recommends systemd \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/trading-readiness
COPY pyproject.toml setup.py README.md ./
COPY exporter ./exporter
COPY healers ./healers
COPY grafana ./grafana
COPY rules ./rules
RUN pip install --no-cache-dir . \
    && trading-readiness --version

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# docker-compose.yml runs the services as the bot's user (BOT_UID:BOT_GID); never as root
USER 65534:65534
EXPOSE 9870 9871
CMD ["trading-readiness", "--help"]
