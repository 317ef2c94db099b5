"""One asyncio HTTP/1.1 server core, h11 in its server role, for the emulator, the webhook receiver and the review
server: keep-alive, pipelining, Content-Length and chunked request bodies, limits (head and body size, open
connections, slow clients), and replies dropped on purpose (`DROP`: the emulator's lost replies).

The application is `handler(Request) -> Reply | Awaitable[Reply]`. Requests on one connection are answered in
order; while one is being handled the next waits (h11 holds it). The server itself answers what it refuses:
400 malformed or ambiguous framing (both Content-Length and Transfer-Encoding), 411 a chunked body where lengths
are required, 413 a body over `max_body` (refused from its declared length, before it is read), 431 a head over
`max_head`, 408 a request not received within `request_timeout`; then it half-closes, discards what the client
still sends for a moment (so the client reads the reply rather than a reset) and closes. A connection over
`max_connections` is closed as soon as it is accepted. Accept failures (out of descriptors) pause accepting for a
second and are logged as one line at most every 30 s, as are refused connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl

import h11

__all__ = [
    "DROP",
    "HttpServer",
    "Limits",
    "Reply",
    "Request",
    "ServerStats",
    "Throttle",
    "descriptor_share",
    "json_reply",
]

log = logging.getLogger(__name__)

ACCEPT_PAUSE = 1.0  # seconds without accepting after running out of descriptors
LINGER = 2.0  # seconds to discard a refused request's remaining bytes before closing
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


@dataclass(frozen=True)
class Request:
    """One request, body complete; header names are lower-case (a repeated header's values joined by ", ")."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    peer: str


@dataclass(frozen=True)
class Reply:
    """What to send back; `drop` closes the connection without replying, `close` closes it after this reply."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False
    close: bool = False


def json_reply(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Reply(status, body, "application/json", headers)


DROP = Reply(0, drop=True)

Handler = Callable[[Request], "Reply | Awaitable[Reply]"]
# (status, reason, the request's headers so far) for every request the server refuses itself
RejectHook = Callable[[int, str, Mapping[str, str]], None]


@dataclass(frozen=True)
class Limits:
    """What one server accepts. Timeouts are seconds (None: no limit): `idle_timeout` for a kept-alive connection
    to start its next request, `request_timeout` from a request's first byte to its last (the slow-client bound).
    `chunked=False` refuses chunked request bodies (411): a length must be declared, so the cap applies first."""

    max_head: int = 32 * 1024
    max_body: int = 1024 * 1024
    max_connections: int = 256
    idle_timeout: float | None = 60.0
    request_timeout: float | None = 30.0
    chunked: bool = True


@dataclass
class ServerStats:
    """Counters of one server (mutable on purpose: a tally)."""

    connections: int = 0  # accepted and served
    refused: int = 0  # closed at once: max_connections were open
    requests: int = 0  # handed to the handler
    rejected: int = 0  # answered by the server itself (framing, limits, timeouts)
    accept_errors: int = 0


def descriptor_share(fraction: float, floor: int, ceiling: int) -> int:
    """`fraction` of this process's open-file limit, within [floor, ceiling]: a connection cap that leaves the
    rest of the process descriptors to work with."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return ceiling
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return ceiling
    return max(floor, min(ceiling, int(soft * fraction)))


class Throttle:
    """One log line per `interval` seconds for a repeating event; the next line says how many were held back."""

    def __init__(self, logger: logging.Logger, interval: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self._held = 0

    def warning(self, message: str) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            self._held += 1
            return
        if self._held and self._last is not None:
            message += f" (and {self._held} more in the last {now - self._last:.0f} s)"
        self._held = 0
        self._last = now
        self._log.warning("%s", message)


def _header_dict(pairs: Iterable[tuple[bytes, bytes]]) -> tuple[dict[str, str], int]:
    """The headers by lower-case name, and their size on the wire (about: ": " and CRLF counted)."""
    out: dict[str, str] = {}
    size = 0
    for raw_name, raw_value in pairs:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
        size += len(name) + len(value) + 4
    return out, size


def _serialize(reply: Reply, close: bool, *, with_body: bool) -> bytes:
    """A reply's bytes; ValueError for a header name or value that could end the head early (CR, LF, NUL)."""
    given = reply.content_type + "".join(k + v for k, v in reply.headers)
    if "\r" in given or "\n" in given or "\0" in given:
        raise ValueError("CR, LF or NUL in a reply header")
    lines = [
        b"HTTP/1.1 %d %s" % (reply.status, _REASONS.get(reply.status, b"Status")),
        b"Content-Type: " + reply.content_type.encode("latin-1"),
        b"Content-Length: %d" % len(reply.body),
    ]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in reply.headers]
    if close:
        lines.append(b"Connection: close")
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    return head + reply.body if with_body else head


def _raw_reply(status: int, reason: str) -> bytes:
    body = json.dumps({"error": reason}).encode()
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (
        status,
        _REASONS.get(status, b"Error"),
        len(body),
    )
    return head + body


class _Connection(asyncio.Protocol):
    """One client connection: h11 parses, requests are answered in order, the server's sweep enforces deadlines."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=server.limits.max_head)
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        self._head: h11.Request | None = None
        self._keep_alive = True
        self._answered = False  # the current request has had its reply (or a refusal) written
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._pending: asyncio.Future[Reply] | None = None  # the handler's reply being awaited
        self._backlog = 0  # bytes received while a reply is pending
        self._paused = False
        self._started = False  # the current request's first byte has arrived
        self._draining = False
        self._closing = False
        self._eof = False  # the client has finished sending
        self.deadline: float | None = None  # loop time at which the sweep ends this connection's wait

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self._server._opened(self)
        self._wait_for_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._server._closed(self)
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()

    def data_received(self, data: bytes) -> None:
        if self._draining:
            self._backlog += len(data)
            if self._backlog > 4 * self._limits.max_body:
                self.close()
            return
        self._h11.receive_data(data)
        if self._pending is None:
            if not self._started:
                self._started = True
                self._set_deadline(self._limits.request_timeout)
            self._process()
        else:
            self._backlog += len(data)
            if self._backlog > self._limits.max_head + self._limits.max_body and not self._paused:
                self._paused = True
                assert self._transport is not None
                self._transport.pause_reading()

    def eof_received(self) -> bool:
        if self._draining:
            self.close()
            return True
        self._eof = True
        self._h11.receive_data(b"")
        if self._pending is None:
            self._process()
        return True  # the writing side stays open for a reply still pending; we close when done

    # ---- the request cycle

    def _process(self) -> None:
        while not self._closing and self._pending is None:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if self._eof:  # a client that left half-way through its request: nobody to answer
                    self.close()
                else:
                    self.refuse(exc.error_status_hint, str(exc))
                return
            if isinstance(event, h11.Request):
                if not self._begin(event):
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch()
            elif isinstance(event, h11.Data):
                self._size += len(event.data)
                if self._size > self._limits.max_body:
                    self.refuse(413, "request body too large")
                    return
                self._body.append(event.data)
            elif event is h11.NEED_DATA:
                return
            else:  # ConnectionClosed, or PAUSED (bytes after a request that ends the connection)
                self.close()
                return

    def _begin(self, head: h11.Request) -> bool:
        self._head = head
        headers, size = _header_dict(head.headers)
        self._headers = headers
        if size + len(head.target) > self._limits.max_head:  # h11 caps only a head still arriving
            self.refuse(431, "request head too large")
            return False
        chunked = "transfer-encoding" in headers
        if chunked and "content-length" in headers:
            self.refuse(400, "both Content-Length and Transfer-Encoding")
            return False
        if chunked and not self._limits.chunked:
            self.refuse(411, "Content-Length required")
            return False
        if not chunked and int(headers.get("content-length", "0")) > self._limits.max_body:
            self.refuse(413, "request body too large")  # before reading it
            return False
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        self._keep_alive = head.http_version == b"1.1" and "close" not in tokens
        if self._h11.they_are_waiting_for_100_continue:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _dispatch(self) -> None:
        head = self._head
        assert head is not None
        target = head.target.decode("latin-1")
        path, _, qs = target.partition("?")
        request = Request(
            head.method.decode("latin-1").upper(),
            path,
            dict(parse_qsl(qs, keep_blank_values=True)) if qs else {},
            self._headers,
            b"".join(self._body),
            self._peer,
        )
        self._body = []
        self._size = 0
        self.deadline = None  # the handler's time is not the client's
        self._server.stats.requests += 1
        try:
            result = self._server.handler(request)
        except Exception as exc:  # a handler bug must not take the server down
            result = self._server.error_reply(exc)
        if isinstance(result, Reply):
            self._respond(result)
            return
        self._pending = pending = asyncio.ensure_future(result)
        pending.add_done_callback(self._finished)

    def _finished(self, pending: asyncio.Future[Reply]) -> None:
        self._pending = None
        if pending.cancelled() or self._closing:
            return
        exc = pending.exception()
        reply = pending.result() if exc is None else None
        if not isinstance(reply, Reply):
            reply = self._server.error_reply(exc or TypeError(f"the handler gave {type(reply).__name__}, not a Reply"))
        self._respond(reply)
        self._backlog = 0
        if self._paused and self._transport is not None and not self._closing:
            self._paused = False
            self._transport.resume_reading()
        self._process()

    def _respond(self, reply: Reply) -> None:
        if self._closing:
            return
        if reply.drop:
            self.close()
            return
        assert self._head is not None
        close = reply.close or not self._keep_alive
        try:
            data = _serialize(reply, close, with_body=self._head.method != b"HEAD")
        except ValueError as exc:  # a header that would split the reply: the handler's bug
            log.debug("unsendable reply: %s", exc)
            data, close = _raw_reply(500, "internal error"), True
        self._answered = True
        self._write(data)
        if close:
            self.close()
            return
        self._next_cycle()

    def _next_cycle(self) -> None:
        """A fresh h11 parser for the next request, fed what already arrived of it (pipelining). The replies are
        ours to write (from trusted values, see _serialize), so the parser's own side never advances."""
        left, closed = self._h11.trailing_data
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self._limits.max_head)
        if left:
            self._h11.receive_data(left)
        if closed:
            self._h11.receive_data(b"")
        self._head = None
        self._headers = {}
        self._answered = False
        self._wait_for_request()

    # ---- endings

    def _wait_for_request(self) -> None:
        self._started = False
        self._set_deadline(self._limits.idle_timeout)

    def _set_deadline(self, seconds: float | None) -> None:
        self.deadline = None if seconds is None else self._server.loop_time() + seconds

    def expire(self) -> None:
        """The sweep found this connection past its deadline: idle -> close; mid-request -> 408."""
        if self._draining or not self._started:
            self.close()
        else:
            self.refuse(408, "request not received in time")

    def refuse(self, status: int, reason: str) -> None:
        """Answer an error the server found itself, then half-close and drain before closing."""
        self._server._rejected(status, reason, self._headers)
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if not self._answered:
            self._write(_raw_reply(status, reason))
            self._answered = True
        self._draining = True
        self._backlog = 0
        self._set_deadline(LINGER)
        if self._paused:
            self._paused = False
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        else:
            self.close()

    def _write(self, data: bytes | None) -> None:
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._closing = True
        self.deadline = None
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()


class HttpServer:
    """Serves `handler` on host:port (port 0: a free one) until stopped; an async context manager.

    `on_error(exc)` makes the reply for a handler that raised (default: 500 `{"error": "internal error"}`);
    `on_reject(status, reason, headers)` hears of every request the server refuses itself."""

    def __init__(
        self,
        handler: Handler,
        host: str,
        port: int,
        *,
        limits: Limits | None = None,
        name: str = "HTTP server",
        backlog: int = 128,
        on_error: Callable[[Exception], Reply] | None = None,
        on_reject: RejectHook | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.handler = handler
        self.host = host
        self.limits = limits or Limits()
        self.name = name
        self.stats = ServerStats()
        self._requested_port = port
        self._backlog = backlog
        self._on_error = on_error
        self._on_reject = on_reject
        self._log = logger or log
        self._accept_log = Throttle(self._log)
        self._refused_log = Throttle(self._log)
        self._error_log = Throttle(self._log)
        self._sockets: list[socket.socket] = []
        self._conns: set[_Connection] = set()
        self._attaching: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def port(self) -> int:
        if not self._sockets:
            raise RuntimeError(f"the {self.name} is not started")
        return int(self._sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def loop_time(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind and start accepting (OSError if the address cannot be bound)."""
        self._loop = loop = asyncio.get_running_loop()
        self._sockets = await _bind(loop, self.host, self._requested_port, self._backlog)
        for sock in self._sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)
        self._schedule_sweep()

    async def stop(self) -> None:
        """Stop accepting, close every connection and cancel the replies still being made."""
        loop = self._loop
        if loop is None:
            return
        for sock in self._sockets:
            loop.remove_reader(sock.fileno())
            sock.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._attaching):
            task.cancel()
        pending = [c._pending for c in self._conns if c._pending is not None]
        for conn in list(self._conns):
            conn.abort()
        for future in pending:
            future.cancel()
        await asyncio.gather(*self._attaching, *pending, return_exceptions=True)
        self._loop = None

    # ---- accepting

    def _accept(self, sock: socket.socket) -> None:
        assert self._loop is not None
        for _ in range(self._backlog):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self.stats.accept_errors += 1
                if exc.errno in _OUT_OF_RESOURCES:
                    self._loop.remove_reader(sock.fileno())
                    self._loop.call_later(ACCEPT_PAUSE, self._resume_accepting, sock)
                self._accept_log.warning(f"{self.name}: cannot accept connections ({exc.strerror or exc})")
                return
            if len(self._conns) + len(self._attaching) >= self.limits.max_connections:
                self.stats.refused += 1
                conn.close()
                self._refused_log.warning(
                    f"{self.name}: {self.limits.max_connections} connections open, closing new ones"
                )
                continue
            conn.setblocking(False)
            task = self._loop.create_task(self._attach(conn))
            self._attaching.add(task)
            task.add_done_callback(self._attaching.discard)

    async def _attach(self, conn: socket.socket) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(lambda: _Connection(self), conn)
        except OSError:
            conn.close()

    def _resume_accepting(self, sock: socket.socket) -> None:
        if self._loop is not None and sock.fileno() >= 0:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    # ---- connections

    def _opened(self, conn: _Connection) -> None:
        self.stats.connections += 1
        self._conns.add(conn)

    def _closed(self, conn: _Connection) -> None:
        self._conns.discard(conn)

    def _rejected(self, status: int, reason: str, headers: Mapping[str, str]) -> None:
        self.stats.rejected += 1
        if self._on_reject is not None:
            self._on_reject(status, reason, headers)

    def error_reply(self, exc: BaseException) -> Reply:
        if self._on_error is not None and isinstance(exc, Exception):
            with contextlib.suppress(Exception):
                return self._on_error(exc)
        self._error_log.warning(f"{self.name}: request handler failed ({type(exc).__name__}: {exc})")
        return json_reply(500, {"error": "internal error"})

    def _schedule_sweep(self) -> None:
        timeouts = [t for t in (self.limits.idle_timeout, self.limits.request_timeout, LINGER) if t is not None]
        interval = max(0.05, min(1.0, min(timeouts) / 4))
        assert self._loop is not None
        self._sweeper = self._loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        if self._loop is None:
            return
        now = self._loop.time()
        for conn in [c for c in self._conns if c.deadline is not None and c.deadline <= now]:
            conn.expire()
        self._schedule_sweep()


async def _bind(loop: asyncio.AbstractEventLoop, host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for host:port as asyncio binds them (every address the host resolves to, IPv6 ones
    IPv6-only); with port 0, every socket on the first one's port."""
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            if sockets and port == 0:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRNOTAVAIL and (sockets or len(infos) > 1):
                    continue  # that address family is not enabled here
                raise OSError(exc.errno, f"could not listen on {host}:{port}: {exc.strerror}") from None
            sock.listen(backlog)
            sock.setblocking(False)
            sockets.append(sock)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise OSError(errno.EADDRNOTAVAIL, f"could not listen on {host}:{port}")
    return sockets
