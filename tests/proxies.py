"""A TCP proxy in front of a real server that can freeze: stop passing bytes while every
connection stays open, which is what a half-open connection or a frozen store looks like
to a client. Its threads are daemons of the test process; ``close`` shuts every socket."""

from __future__ import annotations

import socket
import threading


class FreezingProxy:
    """Listens on a free loopback port (``port``) and passes bytes both ways between each
    client and a new connection to ``127.0.0.1:upstream_port``, until ``frozen`` is set:
    then what either side sends is swallowed (never delivered later), and connections stay
    open. ``swallowed`` counts the bytes clients sent while frozen and ``accepted`` the
    connections made through it, so a test can wait until a call is stuck, or a client
    has tried again, rather than sleep."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.frozen = threading.Event()
        self.swallowed = 0
        self.accepted = 0
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, name="freezing-proxy", daemon=True).start()

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        """Pass bytes again. What was swallowed stays lost: a client waiting for the reply
        to a request sent while frozen waits until its own timeout."""
        self.frozen.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()  # the server is down: so is the connection through us
                continue
            with self._lock:
                self.sockets += [client, server]
                self.accepted += 1
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            if self.frozen.is_set():  # swallowed: the connection stays open
                if from_client:
                    with self._lock:
                        self.swallowed += len(data)
                continue
            try:
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        with self._lock:
            sockets = list(self.sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it
            except OSError:
                pass
            sock.close()

    def __enter__(self) -> FreezingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
