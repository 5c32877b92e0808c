# gogeta: a reverse proxy whose routes live in etcd (v2 API).
#
#   docker build -t gogeta .
#   docker run -p 7777:7777 gogeta -etcdAddress http://172.17.42.1:4001
#
# Arguments are gogeta's own flags. With GOGETA_WORKERS set above 0, gunicorn runs that many
# gevent workers instead, and every setting then comes from a GOGETA_* variable.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Runtime dependencies only (requirements.txt; the test tools are elsewhere): all wheels.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY gogeta.py errors.py gunicorn.conf.py gunicorn_hooks.py docker-entrypoint.sh ./
COPY proxy/ ./proxy/
COPY resolvers/ ./resolvers/
COPY settings/ ./settings/
COPY framing/ ./framing/
COPY issuance/ ./issuance/
COPY transport/ ./transport/
COPY templates/ ./templates/

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gogeta
USER 10001

EXPOSE 7777

# The health path answers 200 once the routing table is loaded, 503 while etcd is lost.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/__gogeta/health' % os.environ.get('GOGETA_PORT', '7777'), timeout=4)"]

ENTRYPOINT ["./docker-entrypoint.sh"]
