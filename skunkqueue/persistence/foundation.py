"""The seed's name for the FoundationDB backend module; see ``fdb.py``."""

from .fdb import FoundationDBBackend, default_cfg

__all__ = ["FoundationDBBackend", "default_cfg"]
