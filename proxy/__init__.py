"""The request path: WSGI app, forwarding, status pages and static assets. No etcd here."""
