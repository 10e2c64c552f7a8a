"""Forking while another thread uses SQLite: a pool forks workers while its scheduler and
hand-back threads talk to the same file, and the child must be able to open the store."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from skunkqueue.persistence import open_backend

from .waiting import wait_until


def test_a_child_forked_while_a_thread_uses_sqlite_can_open_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    busy = open_backend(url, "q")
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            busy.stats(time.time())
            other = open_backend(url, "q")  # opening and closing files takes the global lock
            other.close()

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    children = []
    try:
        for _ in range(40):
            pid = os.fork()
            if pid == 0:  # the child: open, use, leave without running the parent's cleanup
                try:
                    child = open_backend(url, "q")
                    child.stats(time.time())
                    child.close()
                finally:
                    os._exit(0)
            children.append(pid)
    finally:
        stop.set()
        thread.join(10)
    done: dict[int, int] = {}

    def all_exited() -> bool:
        for pid in children:
            if pid not in done:
                finished, status = os.waitpid(pid, os.WNOHANG)
                if finished:
                    done[pid] = status
        return len(done) == len(children)

    try:
        wait_until(all_exited, 20, what="every forked child to open the store and exit")
    finally:
        for pid in children:
            if pid not in done:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
    assert all(os.waitstatus_to_exitcode(s) == 0 for s in done.values())
    busy.close()
