"""The raw transport LaminaClient sends its API requests over: `send()` takes method, target, path, headers and
body and returns status, headers and body, with no httpx Request/Response per call. Two implementations:
`H11Transport` (asyncio connections kept alive in a small pool, h11 doing the protocol) and `HttpxAdapter`
(any httpx transport behind the same call: httpx.MockTransport in tests, httpx's own behind a proxy).
`default_transport()` picks one.

Why not httpx's transport by default: at 100 runs in flight its connection pool and the AsyncClient layers cost
several times the CPU a run of H11Transport does, and CPU is what bounds the executor (DESIGN.md §6; measured on
the emulator, README "Performance"). What H11Transport leaves out, on purpose: proxies (`default_transport` hands
those to httpx), HTTP/2, streaming bodies (API replies are small JSON; downloads use httpx).

Both bound a reply: at most `max_reply` bytes of body (MAX_REPLY: Lamina's replies are kilobytes) and, once the
request is written, a `deadline` in seconds for the whole reply besides the read timeout between bytes. Errors
come out as httpx's exceptions (or ours, subclassing them), so the client's mapping does not depend on the
transport:

    connection refused / DNS / TLS failure -> httpx.ConnectError     (nothing was sent)
      certificate verification failed      -> TlsVerifyError         (nothing was sent; not transient)
    connect timeout                        -> httpx.ConnectTimeout   (nothing was sent)
    no reply byte within the read timeout  -> httpx.ReadTimeout      (sent; outcome unknown)
    reply not complete within the deadline -> ReplyDeadlineError     (sent; outcome unknown)
    reply body over max_reply              -> ReplyTooLargeError     (sent; outcome unknown)
    connection lost or malformed reply     -> httpx.RemoteProtocolError / httpx.ReadError (sent; unknown)
    no free connection within pool timeout -> httpx.PoolTimeout      (nothing was sent)

Nothing is ever resent here: whether a request may be retried is the client's decision alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NamedTuple, Protocol, cast
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]  # missing from typeshed

import h11
import httpx

from lamina_batch.errors import ConfigError, Problem

_Key = tuple[str, str, int]
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_REPLY = 4 * 1024 * 1024  # bytes of reply body; Lamina's replies are kilobytes
Timeouts = Mapping[str, float | None]  # httpx's keys: connect, read (between bytes), write, pool
AfterSend = Callable[[], object]


class TlsVerifyError(httpx.ConnectError):
    """The server's TLS certificate failed verification: nothing was sent, and trying again will not help."""


class ReplyTooLargeError(httpx.TransportError):
    """The reply body passed the transport's `max_reply`; the connection was closed without reading the rest."""


class ReplyDeadlineError(httpx.ReadTimeout):
    """The reply had not fully arrived `deadline` seconds after the request was written (a server trickling it)."""


class Target(NamedTuple):
    """Where `H11Transport.send` connects: scheme, host, port, and the Host header (`netloc`)."""

    scheme: str
    host: str
    port: int
    netloc: bytes

    @classmethod
    def of(cls, url: httpx.URL) -> Target:
        if url.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {url.scheme!r}")
        return cls(url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80), url.netloc)


class RawReply(NamedTuple):
    """A reply as `H11Transport.send` returns it: status, raw header pairs, the whole body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    content: bytes


class _Connection(asyncio.Protocol):
    """One socket and its h11 state machine; the reader side wakes whoever waits for bytes."""

    def __init__(self) -> None:
        self.h11 = h11.Connection(h11.CLIENT)
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport whatever the loop (uvloop's do not subclass asyncio.Transport)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._feed(data)

    def eof_received(self) -> bool:
        self._feed(b"")
        return False  # close our side too

    def _feed(self, data: bytes) -> None:
        try:
            self.h11.receive_data(data)
        except RuntimeError as exc:  # bytes after the end of the connection: nothing sane to do with them
            self._error = exc
            self.close()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_event(self, read_timeout: float | None, deadline: float | None) -> Any:
        """The next h11 event of the reply, waiting (at most `read_timeout` between bytes, and never past the
        loop time `deadline`) for more data: TimeoutError or ReplyDeadlineError when either passes."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.lost:
                raise ConnectionResetError(f"connection closed by the server ({self._error or 'no reason'})")
            loop = asyncio.get_running_loop()
            wait, by_deadline = read_timeout, False
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    raise ReplyDeadlineError("the reply did not finish arriving before the deadline")
                if wait is None or left < wait:
                    wait, by_deadline = left, True
            self._waiter = waiter = loop.create_future()
            timer = None if wait is None else loop.call_later(wait, _expire, waiter)
            try:
                await waiter
            except TimeoutError:
                if by_deadline:
                    raise ReplyDeadlineError("the reply did not finish arriving before the deadline") from None
                raise
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()

    def reusable(self, now: float, expiry: float) -> bool:
        return (
            not self.lost
            and self.transport is not None
            and not self.transport.is_closing()
            and self.h11.our_state is h11.IDLE
            and self.h11.their_state is h11.IDLE
            and now - self.idle_since < expiry
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.lost = True


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Bounds(NamedTuple):
    """What one exchange may take (reply size, deadline) and who hears of it (after_send, httpx's request)."""

    max_reply: int
    deadline: float | None
    after_send: AfterSend | None
    request: httpx.Request | None


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB" if n >= 1024 * 1024 else f"{n} bytes"


class H11Transport(httpx.AsyncBaseTransport):
    """Keeps up to `max_connections` connections per host; an idle one older than `keepalive_expiry` seconds is
    closed rather than reused: servers drop idle connections (Node.js, for one, after 5 s), and a start sent on
    one the server is closing at that moment has an unknown outcome, which costs a reconciliation.

    `verify`: True uses httpx's certificate bundle (the same trust as httpx's transport), an `ssl.SSLContext`
    is used as given, False turns certificate checks off (never the default).
    """

    def __init__(
        self,
        *,
        max_connections: int = 128,
        verify: ssl.SSLContext | bool = True,
        keepalive_expiry: float = 4.0,
        max_reply: int = MAX_REPLY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max(1, max_connections)
        self._verify = verify
        self._expiry = keepalive_expiry
        self._max_reply = max_reply
        self._clock = clock
        self._ssl: ssl.SSLContext | None = None
        self._idle: dict[_Key, list[_Connection]] = {}
        self._open: dict[_Key, int] = {}
        self._queue: dict[_Key, deque[asyncio.Future[None]]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"H11Transport(max_connections={self._max})"

    # ------------------------------------------------------------------ the request

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}", request=request)
        headers = [(b"Host", url.netloc)]
        headers += [(k, v) for k, v in request.headers.raw if k.lower() not in (b"host", b"transfer-encoding")]
        reply = await self._request(
            request.method.encode(),
            Target(url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80), url.netloc),
            url.raw_path,
            headers,
            await request.aread(),
            request.extensions.get("timeout", {}),
            _Bounds(self._max_reply, None, None, request),
        )
        return httpx.Response(
            reply.status,
            headers=reply.headers,
            content=reply.content,
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def send(
        self,
        method: bytes,
        target: Target,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: Timeouts,
        *,
        deadline: float | None = None,
        max_reply: int | None = None,
        after_send: AfterSend | None = None,
    ) -> RawReply:
        """One request without httpx's Request/Response objects (LaminaClient's path: building those cost
        ~0.15 ms CPU a request). `headers` are sent as given after Host; Content-Length is added for a body.
        `deadline`: seconds from the request being written to the reply's last byte; `max_reply`: the body cap
        (default: the transport's). `after_send` is called once the request is written, before the reply is
        read. Fails with the same httpx exceptions as handle_async_request (their `request` is None)."""
        bounds = _Bounds(self._max_reply if max_reply is None else max_reply, deadline, after_send, None)
        return await self._request(method, target, path, [(b"Host", target.netloc), *headers], body, timeouts, bounds)

    async def _request(
        self,
        method: bytes,
        target: Target,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: Timeouts,
        bounds: _Bounds,
    ) -> RawReply:
        if self._closed:
            raise RuntimeError("H11Transport is closed")
        if body and not any(k.lower() == b"content-length" for k, _ in headers):
            headers.append((b"Content-Length", str(len(body)).encode()))
        key: _Key = (target.scheme, target.host, target.port)
        conn = await self._acquire(key, bounds.request, timeouts)
        try:
            reply = await self._exchange(conn, method, path, headers, body, timeouts.get("read"), bounds)
        except BaseException:
            conn.close()  # half a request/reply on it: never reusable
            self._release(key, conn)
            raise
        self._release(key, conn)
        return reply

    async def _exchange(
        self,
        conn: _Connection,
        method: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        read_timeout: float | None,
        bounds: _Bounds,
    ) -> RawReply:
        request = bounds.request
        try:
            data = conn.h11.send(h11.Request(method=method, target=path, headers=headers))
            if body:
                data = (data or b"") + (conn.h11.send(h11.Data(data=body)) or b"")
            data = (data or b"") + (conn.h11.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        if conn.transport is None or conn.lost:
            raise httpx.ReadError("connection closed before the request was written", request=request)
        conn.transport.write(data)
        deadline = None if bounds.deadline is None else asyncio.get_running_loop().time() + bounds.deadline
        if bounds.after_send is not None:
            bounds.after_send()
        status = 0
        reply_headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                event = await conn.next_event(read_timeout, deadline)
                if isinstance(event, h11.Response):
                    status, reply_headers = event.status_code, list(event.headers)
                elif isinstance(event, h11.InformationalResponse):
                    continue
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > bounds.max_reply:
                        raise ReplyTooLargeError(f"body larger than {_size(bounds.max_reply)}", request=request)
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ConnectionResetError("connection closed before the reply was complete")
        except TimeoutError as exc:
            raise httpx.ReadTimeout(f"no reply within {read_timeout} s", request=request) from exc
        except ReplyDeadlineError as exc:
            raise ReplyDeadlineError(
                f"not complete {bounds.deadline:g} s after the request was sent", request=request
            ) from exc
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(f"malformed reply: {exc}", request=request) from exc
        except OSError as exc:
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            conn.idle_since = self._clock()
        else:
            conn.close()  # `Connection: close`, HTTP/1.0, or a reply that ends with the connection
        return RawReply(status, reply_headers, b"".join(chunks))

    # ------------------------------------------------------------------ the pool

    async def _acquire(
        self, key: _Key, request: httpx.Request | None, limits: Mapping[str, float | None]
    ) -> _Connection:
        deadline_pool = limits.get("pool")
        while True:
            idle = self._idle.get(key)
            now = self._clock()
            while idle:
                conn = idle.pop()
                if conn.reusable(now, self._expiry):
                    return conn
                conn.close()
                self._forget(key)
            if self._open.get(key, 0) < self._max:
                self._open[key] = self._open.get(key, 0) + 1
                try:
                    return await self._connect(key, request, limits.get("connect"))
                except BaseException:
                    self._forget(key)
                    self._wake_one(key)
                    raise
            waiter = asyncio.get_running_loop().create_future()
            queue = self._queue.setdefault(key, deque())
            queue.append(waiter)
            try:
                async with asyncio.timeout(deadline_pool):
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one(key)  # woken for a free connection just as we gave up: pass the turn on
                else:
                    waiter.cancel()
                    with contextlib.suppress(ValueError):
                        queue.remove(waiter)
                if isinstance(exc, TimeoutError):
                    raise httpx.PoolTimeout("no free connection in time", request=request) from exc
                raise

    async def _connect(self, key: _Key, request: httpx.Request | None, limit: float | None) -> _Connection:
        scheme, host, port = key
        tls = self._tls() if scheme == "https" else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limit):
                _, conn = await loop.create_connection(
                    _Connection, host, port, ssl=tls, server_hostname=host if tls is not None else None
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"could not connect to {host}:{port} within {limit} s", request=request) from exc
        except ssl.SSLCertVerificationError as exc:
            raise TlsVerifyError(f"{type(exc).__name__}: {exc.verify_message or exc}", request=request) from exc
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}", request=request) from exc
        return conn

    def _forget(self, key: _Key) -> None:
        # never below zero: aclose() may have cleared the counts while a request was still in flight
        self._open[key] = max(0, self._open.get(key, 0) - 1)

    def _release(self, key: _Key, conn: _Connection) -> None:
        if conn.lost or self._closed:
            conn.close()
            self._forget(key)
        else:
            self._idle.setdefault(key, []).append(conn)
        self._wake_one(key)

    def _wake_one(self, key: _Key) -> None:
        queue = self._queue.get(key)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            # built on first https use only: loading a CA bundle costs tens of milliseconds
            if isinstance(self._verify, ssl.SSLContext):
                self._ssl = self._verify
            else:
                self._ssl = httpx.create_ssl_context(verify=self._verify)
        return self._ssl

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        self._open.clear()


class RawTransport(Protocol):
    """What LaminaClient sends through: H11Transport itself, or any httpx transport inside an HttpxAdapter."""

    async def send(
        self,
        method: bytes,
        target: Target,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: Timeouts,
        *,
        deadline: float | None = None,
        max_reply: int | None = None,
        after_send: AfterSend | None = None,
    ) -> RawReply: ...

    async def aclose(self) -> None: ...


class HttpxAdapter:
    """Any httpx transport behind `send()`: the request goes out as an httpx.Request built from the same
    method, URL, headers and body (so the same bytes reach the wire), and the reply is read under the same
    bounds. The deadline counts from the call here, with the connect and pool timeouts added (httpx offers no
    hook between writing the request and reading the reply); `after_send` runs once the transport has taken
    the request body (a body-less request: once the reply head is in)."""

    def __init__(self, transport: httpx.AsyncBaseTransport, *, max_reply: int = MAX_REPLY) -> None:
        self.transport = transport
        self._max_reply = max_reply

    def __repr__(self) -> str:
        return f"HttpxAdapter({type(self.transport).__name__})"

    async def send(
        self,
        method: bytes,
        target: Target,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: Timeouts,
        *,
        deadline: float | None = None,
        max_reply: int | None = None,
        after_send: AfterSend | None = None,
    ) -> RawReply:
        url = httpx.URL(f"{target.scheme}://{target.netloc.decode('ascii')}{path.decode('ascii')}")
        content: bytes | AsyncIterator[bytes] = body
        if after_send is not None and body:
            content = _then(body, after_send)
        request = httpx.Request(
            method.decode("ascii"), url, headers=headers, content=content, extensions={"timeout": dict(timeouts)}
        )
        limit = self._max_reply if max_reply is None else max_reply
        total = None
        if deadline is not None:
            total = deadline + (timeouts.get("connect") or 0.0) + (timeouts.get("pool") or 0.0)
        try:
            async with asyncio.timeout(total):
                response = await self.transport.handle_async_request(request)
                if after_send is not None and not body:
                    after_send()
                try:
                    content_read = await _read_capped(response, limit, request)
                finally:
                    await response.aclose()
        except TimeoutError as exc:
            if total is None:
                raise
            raise ReplyDeadlineError(f"not complete within {total:g} s", request=request) from exc
        except httpx.ConnectError as exc:
            if _cert_failure(exc) is not None and not isinstance(exc, TlsVerifyError):
                raise TlsVerifyError(f"{_cert_failure(exc)}", request=request) from exc
            raise
        reply_headers = [(k.lower(), v) for k, v in response.headers.raw]
        return RawReply(response.status_code, reply_headers, content_read)

    async def aclose(self) -> None:
        await self.transport.aclose()


async def _then(body: bytes, after_send: AfterSend) -> AsyncIterator[bytes]:
    yield body
    after_send()  # the transport asked for more: it has written what it took


async def _read_capped(response: httpx.Response, limit: int, request: httpx.Request) -> bytes:
    try:
        whole = response.content  # transports that hand over a body already in memory (MockTransport, ours)
    except httpx.ResponseNotRead:
        pass
    else:
        if len(whole) > limit:
            raise ReplyTooLargeError(f"body larger than {_size(limit)}", request=request)
        return whole
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise ReplyTooLargeError(f"body larger than {_size(limit)}", request=request)
        chunks.append(chunk)
    return b"".join(chunks)


def _cert_failure(exc: BaseException) -> str | None:
    """The verification message when `exc` was caused by a certificate that failed verification."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"{type(seen).__name__}: {seen.verify_message or seen}"
        seen = seen.__cause__ or seen.__context__
    return None


def env_proxy(url: str) -> str | None:
    """The proxy that HTTP(S)_PROXY / ALL_PROXY / NO_PROXY (as httpx reads them) select for `url`, if any.
    Loopback hosts never go through a proxy: that is the emulator (`run --emulator`) or a tunnel of the user's."""
    target = httpx.URL(url)
    if target.host in _LOOPBACK:
        return None
    proxies = urllib.request.getproxies_environment()
    if not proxies or proxy_bypass_environment(target.host, proxies):
        return None
    return proxies.get(target.scheme) or proxies.get("all")


def default_transport(base_url: str, max_connections: int) -> httpx.AsyncBaseTransport:
    """H11Transport, or httpx's own transport when the environment routes `base_url` through a proxy.
    A proxy httpx cannot use is a ConfigError naming the variables (never the URL: it may carry a password)."""
    proxy = env_proxy(base_url)
    if proxy is None:
        return H11Transport(max_connections=max_connections)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    try:
        return httpx.AsyncHTTPTransport(proxy=proxy, limits=limits)
    except (ValueError, TypeError, ImportError, httpx.InvalidURL) as exc:
        reason = "SOCKS proxies need httpx[socks]" if isinstance(exc, ImportError) else "not a proxy URL httpx accepts"
        raise ConfigError(
            Problem(
                f"the proxy set for {httpx.URL(base_url).host} in HTTPS_PROXY/HTTP_PROXY/ALL_PROXY cannot be used "
                f"({reason})",
                hint="use an http:// or https:// proxy URL, or list the host in NO_PROXY",
            )
        ) from None
