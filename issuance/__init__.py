"""Certificates on demand (docs/behaviour.md §10): ordered over ACME, shared through etcd.

`client.py` speaks ACME (one order, HTTP-01) and knows nothing of etcd; `orders.py` decides
when to order, takes the fleet's lock, publishes the challenge answers and stores the
result through a source (resolvers/source.py); `answers.py` answers the validation requests
from the mirror or etcd; `backoff.py` is the pure per-name backoff.
"""
