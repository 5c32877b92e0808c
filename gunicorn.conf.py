# gunicorn settings for gogeta, read from the working directory (or `-c gunicorn.conf.py`):
#
#   gunicorn -w 2 -b 0.0.0.0:7777 'gogeta:create_app()'
#
# gogeta's own settings come from GOGETA_* variables (GOGETA_ETCD_ADDRESS...). Metrics at
# /__gogeta/metrics cover every worker through PROMETHEUS_MULTIPROC_DIR, a directory this
# file makes (a temporary one unless the variable is set) and empties at start.
import os

import gunicorn_hooks as hooks
import settings

# gunicorn's gevent worker serving with gogeta's own pywsgi server (gunicorn_hooks.py);
# `-k` on the command line wins (`-k gevent` gets gogeta's server too; other workers are
# refused).
worker_class = "gunicorn_hooks.ProxyWorker"
# Connections one worker holds at once (gunicorn's default: 1,000). Idle keep-alive clients
# count: at the limit a worker stops accepting and new clients wait in the listen queue
# until one leaves (up to -clientTimeout). An idle connection costs about 15 KB; the
# process's open-file limit must allow as many.
worker_connections = 10000
# SIGTERM to the arbiter: workers stop accepting and finish requests for this long.
_drain = settings.BY_NAME["drainTimeout"]
graceful_timeout = round(_drain.parse(os.environ.get(_drain.env_name, _drain.default)))

hooks.metrics_dir()
on_starting = hooks.on_starting
post_fork = hooks.post_fork
post_worker_init = hooks.post_worker_init
worker_exit = hooks.worker_exit
child_exit = hooks.child_exit
on_exit = hooks.on_exit
