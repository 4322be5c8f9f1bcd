"""A TCP forwarder that can be taken down and brought back, to play an unreachable server.

After psycopg's ``tests/fix_proxy.py``: point a dbsentry connection at the forwarder
instead of PostgreSQL; ``down()`` refuses new connections and cuts the open ones.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

from .pg import free_port


class TcpForwarder:
    def __init__(
        self, target_host: str, target_port: int, host: str = "127.0.0.1", *, record: bool = False, record_back: bool = False
    ) -> None:
        self.target = (target_host, target_port)
        # With ``record``: every byte sent towards the target, in order per connection;
        # with ``record_back``: every byte the target sent back.
        self.sent = bytearray()
        self.received = bytearray()
        self._record = record
        self._record_back = record_back
        self.host = host
        self.port = free_port(host)
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> TcpForwarder:
        self.up()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.down()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections (nothing listens) and cut the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            socks, self._open = self._open, set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                stale = self._listener is not listener  # down() ran meanwhile: it would miss these
                if not stale:
                    self._open.update((client, server))
            if stale:
                client.close()
                server.close()
                return
            threading.Thread(target=self._pipe, args=(client, server, self._record), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, self._record_back, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool = False, back: bool = False) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    with self._lock:
                        (self.received if back else self.sent).extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # Either side ending ends both (shutdown also wakes the other thread's recv).
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
