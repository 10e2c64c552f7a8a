"""Run a program with this process's wall clock shifted, as on a host whose clock is off.

``SQ_CLOCK_SHIFT=30 python -m tests.clockshift skunkqueue work ...`` runs ``python -m
skunkqueue work ...`` with ``time.time()`` (and ``time.time_ns()``) 30 s ahead; a name
ending in ``.py`` is run as a script. Children it forks keep the shift. Monotonic clocks,
and so every timed wait, are untouched, which is what libfaketime gets wrong for Python
(its ``time.sleep`` and thread waits misbehave in some modes): this is the per-process
clock offset of a host with a skewed clock.
"""

from __future__ import annotations

import os
import runpy
import sys
import time

SHIFT_ENV = "SQ_CLOCK_SHIFT"


def install(shift: float) -> None:
    true_time, true_time_ns = time.time, time.time_ns
    time.time = lambda: true_time() + shift
    time.time_ns = lambda: true_time_ns() + round(shift * 1e9)


def main() -> None:
    install(float(os.environ.get(SHIFT_ENV, "0")))
    target, sys.argv = sys.argv[1], sys.argv[1:]
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
