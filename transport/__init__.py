"""The connection layer: listening sockets, gogeta's pywsgi server and handler, the
gunicorn worker, sending on sockets. The only code that knows gevent.pywsgi's and
gunicorn's internals; it sees the application as a WSGI callable and nothing more."""
