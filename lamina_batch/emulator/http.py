"""A small HTTP/1.1 server on asyncio protocols: keep-alive, pipelining, Content-Length and chunked bodies.

The application is a callable `handler(request) -> Reply | Awaitable[Reply]`; a `Reply` with `drop=True` closes
the connection without writing anything (the emulator's lost-reply faults).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

MAX_HEAD = 32 * 1024

_REASONS = {s.value: s.phrase for s in HTTPStatus}


@dataclass(frozen=True)
class Request:
    """One parsed request; header names are lower-case."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    peer: str


@dataclass(frozen=True)
class Reply:
    """What to send back (or `drop`: close without replying)."""

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


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ConnectionRegistry:
    """Open connections, so a stop can close idle keep-alive sockets too."""

    open: set[HttpProtocol] = field(default_factory=set)

    def close_all(self) -> None:
        for c in list(self.open):
            c.abort()


class HttpProtocol(asyncio.Protocol):
    """One client connection: parse requests in order, answer each before parsing the next."""

    def __init__(self, handler: Handler, registry: ConnectionRegistry, max_body: int) -> None:
        self._handler = handler
        self._registry = registry
        self._max_body = max_body
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy: asyncio.Task[None] | None = None
        self._peer = "?"
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self._registry.open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.open.discard(self)
        self._closing = True
        if self._busy is not None and not self._busy.done():
            self._busy.cancel()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._busy is None:
            self._process()

    def _process(self) -> None:
        while not self._closing and self._busy is None:
            try:
                parsed = self._parse_one()
            except _BadRequest as e:
                self._write(Reply(e.status, json.dumps({"error": str(e)}).encode(), close=True), False)
                return
            if parsed is None:
                return
            req, keep_alive = parsed
            try:
                result = self._handler(req)
            except Exception as e:  # a handler bug must not kill the server
                result = json_reply(500, {"error": f"emulator bug: {type(e).__name__}", "code": "INTERNAL_ERROR"})
            if isinstance(result, Reply):
                self._write(result, keep_alive)
            else:
                self._busy = asyncio.ensure_future(self._finish(result, keep_alive))

    async def _finish(self, pending: Awaitable[Reply], keep_alive: bool) -> None:
        try:
            reply = await pending
        except asyncio.CancelledError:
            return
        except Exception as e:
            reply = json_reply(500, {"error": f"emulator bug: {type(e).__name__}", "code": "INTERNAL_ERROR"})
        self._busy = None
        self._write(reply, keep_alive)
        if self._buf:
            self._process()

    def _parse_one(self) -> tuple[Request, bool] | None:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                raise _BadRequest(431, "request head too large")
            return None
        head = bytes(self._buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest(400, "malformed header")
            headers[name.strip().lower()] = value.strip()
        pos = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            decoded = self._dechunk(pos)
            if decoded is None:
                return None
            body, pos = decoded
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise _BadRequest(400, "bad Content-Length") from None
            if length < 0 or length > self._max_body:
                raise _BadRequest(413, "request body too large")
            if len(self._buf) < pos + length:
                return None
            body = bytes(self._buf[pos : pos + length])
            pos += length
        del self._buf[:pos]
        path, _, qs = target.partition("?")
        query = dict(parse_qsl(qs, keep_blank_values=True)) if qs else {}
        conn = headers.get("connection", "").lower()
        keep_alive = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
        return Request(method.upper(), path, query, headers, body, self._peer), keep_alive

    def _dechunk(self, pos: int) -> tuple[bytes, int] | None:
        body = bytearray()
        while True:
            eol = self._buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            try:
                size = int(bytes(self._buf[pos:eol]).split(b";")[0], 16)
            except ValueError:
                raise _BadRequest(400, "bad chunk size") from None
            if len(body) + size > self._max_body:
                raise _BadRequest(413, "request body too large")
            start = eol + 2
            if size == 0:
                # skip trailers up to the blank line
                fin = self._buf.find(b"\r\n", start)
                while fin >= 0 and fin != start:
                    start = fin + 2
                    fin = self._buf.find(b"\r\n", start)
                if fin < 0:
                    return None
                return bytes(body), fin + 2
            if len(self._buf) < start + size + 2:
                return None
            body += self._buf[start : start + size]
            pos = start + size + 2

    def _write(self, reply: Reply, keep_alive: bool) -> None:
        t = self._transport
        if t is None or t.is_closing():
            return
        if reply.drop:
            self._closing = True
            t.close()
            return
        close = reply.close or not keep_alive
        head = [
            f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}",
        ]
        head.extend(f"{k}: {v}" for k, v in reply.headers)
        if close:
            head.append("Connection: close")
        t.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body)
        if close:
            self._closing = True
            t.close()
