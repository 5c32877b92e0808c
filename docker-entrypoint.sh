#!/bin/sh
# The image's entrypoint.
#
#   docker run IMAGE -etcdAddress http://172.17.42.1:4001   -> python gogeta.py <flags>
#   docker run -e GOGETA_WORKERS=4 -e GOGETA_ETCD_ADDRESS=... IMAGE
#                                                            -> gunicorn, 4 gevent workers
#   docker run IMAGE sh                                      -> any other command
#
# It execs, so the server is PID 1's process and gets SIGTERM from `docker stop` directly.
set -eu

case "${1:-}" in
  -*|"") ;;
  *) exec "$@" ;;
esac

workers="${GOGETA_WORKERS:-0}"
case "$workers" in
  ''|*[!0-9]*)
    echo "docker-entrypoint: GOGETA_WORKERS must be a number, not '$workers'" >&2
    exit 2 ;;
esac

if [ "$workers" -gt 0 ]; then
  if [ "$#" -gt 0 ]; then
    echo "docker-entrypoint: with GOGETA_WORKERS, settings come from GOGETA_* variables" \
         "(e.g. GOGETA_ETCD_ADDRESS), not from flags: $*" >&2
    exit 2
  fi
  # No control socket (gunicornc): its default place is under HOME, which the user
  # running the image does not have.
  exec gunicorn -c gunicorn.conf.py -w "$workers" --no-control-socket \
       -b "${GOGETA_LISTEN_ADDRESS:-0.0.0.0}:${GOGETA_PORT:-7777}" \
       'gogeta:create_app()'
fi

exec python gogeta.py "$@"
