"""The connection layer: listening sockets, gogeta's pywsgi server and handler, the
gunicorn worker, the standalone process's listeners, sending on sockets. The only code
that knows gevent.pywsgi's and gunicorn's internals; it sees the application as a WSGI
callable and nothing more."""
