"""A hostile output-file server for download tests: real loopback HTTP on its own threads (so asyncio tests and
process tests can both use it) that answers every GET with a full Content-Length and then drips the body."""

from __future__ import annotations

import socket
import socketserver
import threading
from types import TracebackType

__all__ = ["DripFiles"]


class DripFiles:
    """Every GET gets 200, `Content-Type: image/png`, the full `Content-Length`, then one byte of `body` every
    `gap` seconds. After `release()` the rest of every body (dripping now or asked later) is sent at once.
    `requests` counts request heads, `sent` body bytes; `dripping` is set once a body has begun."""

    def __init__(self, *, size: int = 4096, gap: float = 1.0) -> None:
        self.body = bytes((i * 7 + 3) % 256 for i in range(size))
        self.gap = gap
        self.requests = 0
        self.sent = 0
        self.dripping = threading.Event()
        self._released = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner._serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler, bind_and_activate=True)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def release(self) -> None:
        """From now on bodies are sent whole, the ones dripping included."""
        self._released.set()

    def __enter__(self) -> DripFiles:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed.set()
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, conn: socket.socket) -> None:
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            with self._lock:
                self.requests += 1
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n" % len(self.body)
            )
            for i in range(len(self.body)):
                if self._released.is_set():
                    conn.sendall(self.body[i:])
                    self._count(len(self.body) - i)
                    return
                conn.sendall(self.body[i : i + 1])
                self._count(1)
                self.dripping.set()
                self._released.wait(self.gap)
                if self._closed.is_set():
                    return
        except OSError:
            return  # the client went away: that is what the tests do to it

    def _count(self, n: int) -> None:
        with self._lock:
            self.sent += n
