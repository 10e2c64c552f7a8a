"""The backend contract suite: one set of tests, run unchanged against every backend.

Each test states one sentence of a ``Backend`` docstring (skunkqueue/persistence/base.py)
as values a backend must produce. Time is always passed in: tests drive etas, leases
and expiry with explicit fake instants and never sleep.
"""
