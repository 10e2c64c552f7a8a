"""Test doubles for SkunkQueue's own tests and benchmarks: not for production.

Nothing in the product imports this package. It ships with the package only because the
end-to-end tests and the benchmarks run real ``skunq`` processes against its stores:

* ``fdb_sim``: an in-memory simulator of FoundationDB's transactions, and a server
  (``python -m skunkqueue.testing.fdb_sim --port PORT``) that shares one with several
  processes;
* ``fdb_backend``: what ``fdbsim://NAME`` and ``fdbsim+tcp://HOST:PORT`` URLs open, the
  FoundationDB backend over the simulator.
"""
