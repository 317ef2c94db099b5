"""Tests for httpd.py, over real loopback sockets: keep-alive, pipelining, framing, limits, timeouts, drops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import httpx
import pytest

from lamina_batch.httpd import DROP, HttpServer, Limits, Reply, Request, Throttle, json_reply

T = TypeVar("T")
Handler = Callable[[Request], "Reply | Awaitable[Reply]"]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def echo(request: Request) -> Reply:
    """Method, path, query, body and a few headers back as JSON."""
    return json_reply(
        200,
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "body": request.body.decode(),
            "x": request.headers.get("x-thing"),
            "peer": request.peer,
        },
    )


async def exchange(port: int, data: bytes, *, read_for: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server sends until it closes (or `read_for` seconds pass)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        async with asyncio.timeout(read_for):
            while chunk := await reader.read(65536):
                out += chunk
    except TimeoutError:
        pass
    writer.close()
    return out


async def read_replies(reader: asyncio.StreamReader, n: int) -> list[tuple[bytes, bytes]]:
    """`n` replies (head, body) framed by Content-Length."""
    replies = []
    for _ in range(n):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line[15:]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        replies.append((head, await reader.readexactly(length)))
    return replies


def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    """httpx reuses one connection for several requests; query, body and headers reach the handler."""

    async def go() -> None:
        async with HttpServer(echo, "127.0.0.1", 0) as server:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
                for i in range(3):
                    r = await http.post(f"/p/{i}", params={"a": "1 2"}, content=b"hi", headers={"X-Thing": "t"})
                    assert r.json() == {
                        "method": "POST",
                        "path": f"/p/{i}",
                        "query": {"a": "1 2"},
                        "body": "hi",
                        "x": "t",
                        "peer": "127.0.0.1",
                    }
            assert server.stats.connections == 1
            assert server.stats.requests == 3

    run(go())


def test_pipelined_requests_are_answered_in_order_even_when_the_first_is_slow() -> None:
    """Two requests in one write: the slow (async) first one is answered before the quick second."""

    def handler(request: Request) -> Reply | Awaitable[Reply]:
        if request.path == "/slow":

            async def later() -> Reply:
                await asyncio.sleep(0.1)
                return json_reply(200, {"n": 1})

            return later()
        return json_reply(200, {"n": 2})

    async def go() -> None:
        async with HttpServer(handler, "127.0.0.1", 0) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
            replies = await read_replies(reader, 2)
            writer.close()
        assert [body for _, body in replies] == [b'{"n":1}', b'{"n":2}']

    run(go())


def test_chunked_request_body_is_decoded() -> None:
    """A chunked body reaches the handler whole."""

    async def go() -> bytes:
        async with HttpServer(echo, "127.0.0.1", 0) as server:
            return await exchange(
                server.port,
                b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            )

    data = run(go())
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b'"body":"abcde"' in data


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
    ],
)
def test_ambiguous_or_malformed_framing_is_refused_and_closed(head: bytes, status: int) -> None:
    """Both Content-Length and Transfer-Encoding, conflicting or bad lengths, unknown codings, garbage: refused
    with one error reply, then the connection closes; the handler never sees them."""
    seen: list[Request] = []

    def handler(request: Request) -> Reply:
        seen.append(request)
        return Reply()

    async def go() -> tuple[bytes, int]:
        async with HttpServer(handler, "127.0.0.1", 0) as server:
            return await exchange(server.port, head + b"abcd"), server.stats.rejected

    data, rejected = run(go())
    assert data.startswith(b"HTTP/1.1 %d " % status), data
    assert data.count(b"HTTP/1.1") == 1
    assert b"Connection: close" in data
    assert seen == []
    assert rejected == 1


def test_limits_head_and_body_size() -> None:
    """A head over max_head is 431; a declared body over max_body is 413 before it is sent; a chunked body
    that grows past max_body is 413 too."""
    limits = Limits(max_head=1024, max_body=100)
    rejects: list[tuple[int, str]] = []

    async def go() -> list[bytes]:
        async with HttpServer(
            echo, "127.0.0.1", 0, limits=limits, on_reject=lambda s, r, h: rejects.append((s, r))
        ) as s:
            big_head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
            declared = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n"  # and no body follows
            chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"40\r\n" + b"a" * 64
            chunked += b"\r\n40\r\n" + b"a" * 64 + b"\r\n"
            return [await exchange(s.port, data) for data in (big_head, declared, chunked)]

    replies = run(go())
    assert [r[:12] for r in replies] == [b"HTTP/1.1 431", b"HTTP/1.1 413", b"HTTP/1.1 413"]
    assert [status for status, _ in rejects] == [431, 413, 413]


def test_chunked_bodies_can_be_refused() -> None:
    """With chunked=False a chunked body is 411: a length must be declared for the cap to apply first."""

    async def go() -> bytes:
        async with HttpServer(echo, "127.0.0.1", 0, limits=Limits(chunked=False)) as server:
            return await exchange(server.port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")

    assert run(go()).startswith(b"HTTP/1.1 411 ")


def test_expect_100_continue_is_answered_before_the_body() -> None:
    """A client waiting for 100 Continue gets it, sends the body, and gets the reply."""

    async def go() -> bytes:
        async with HttpServer(echo, "127.0.0.1", 0) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"ok")
            ((_, body),) = await read_replies(reader, 1)
            writer.close()
            return body

    assert b'"body":"ok"' in run(go())


def test_connections_over_the_cap_are_closed_at_once() -> None:
    """With max_connections=2, a third connection is closed without a reply while two stay served."""

    async def go() -> None:
        async with HttpServer(echo, "127.0.0.1", 0, limits=Limits(max_connections=2)) as server:
            held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
            for reader, writer in held:
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await read_replies(reader, 1)  # served, and kept alive
            extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", server.port)
            extra_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await asyncio.wait_for(extra_reader.read(), 5) == b""
            assert server.stats.refused == 1
            for _, writer in held:
                writer.close()
            extra_writer.close()

    run(go())


def test_slow_client_gets_408_and_idle_connection_is_closed() -> None:
    """A request not complete within request_timeout is answered 408; a kept-alive connection that starts no
    request within idle_timeout is closed without a reply."""
    limits = Limits(idle_timeout=0.3, request_timeout=0.3)

    async def go() -> tuple[bytes, bytes, float]:
        async with HttpServer(echo, "127.0.0.1", 0, limits=limits) as server:
            loop = asyncio.get_running_loop()
            slow = await exchange(server.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            started = loop.time()
            idle = await exchange(server.port, b"")
            return slow, idle, loop.time() - started

    slow, idle, waited = run(go())
    assert slow.startswith(b"HTTP/1.1 408 ")
    assert idle == b""
    assert waited < 4.0


def test_drop_closes_without_replying_and_close_ends_the_connection() -> None:
    """DROP closes the connection with nothing written; Reply(close=True) answers with Connection: close."""

    def handler(request: Request) -> Reply:
        return DROP if request.path == "/drop" else Reply(204, close=True)

    async def go() -> tuple[bytes, bytes]:
        async with HttpServer(handler, "127.0.0.1", 0) as server:
            dropped = await exchange(server.port, b"GET /drop HTTP/1.1\r\nHost: x\r\n\r\n")
            closed = await exchange(
                server.port, b"GET /c HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            return dropped, closed

    dropped, closed = run(go())
    assert dropped == b""
    assert closed.count(b"HTTP/1.1 204") == 1
    assert b"Connection: close" in closed


def test_http10_and_head_requests() -> None:
    """HTTP/1.0 is answered and closed; HEAD gets the headers (Content-Length included) but no body."""

    async def go() -> tuple[bytes, bytes]:
        async with HttpServer(lambda r: Reply(200, b"12345", "text/plain"), "127.0.0.1", 0) as server:
            old = await exchange(server.port, b"GET / HTTP/1.0\r\n\r\n")
            head = await exchange(server.port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return old, head

    old, head = run(go())
    assert old.startswith(b"HTTP/1.1 200 OK\r\n")
    assert old.endswith(b"\r\n\r\n12345")
    assert b"Content-Length: 5\r\n" in head
    assert head.endswith(b"\r\n\r\n")


def test_handler_failures_become_500_and_the_server_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """A handler that raises (sync or async) gets on_error's reply, or a plain 500; a reply header with a line
    break is never written; the connection keeps serving."""

    def handler(request: Request) -> Reply | Awaitable[Reply]:
        if request.path == "/sync":
            raise RuntimeError("boom")
        if request.path == "/inject":
            return Reply(200, headers=(("X-Evil", "a\r\nSet-Cookie: b"),))
        if request.path == "/async":

            async def fail() -> Reply:
                raise ValueError("later")

            return fail()
        return Reply(200, b"fine", "text/plain")

    async def go() -> list[int]:
        custom = HttpServer(handler, "127.0.0.1", 0, on_error=lambda e: json_reply(503, {"e": type(e).__name__}))
        async with HttpServer(handler, "127.0.0.1", 0) as plain, custom:
            statuses = []
            for server in (plain, custom):
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
                    for path in ("/sync", "/async", "/ok"):
                        statuses.append((await http.get(path)).status_code)
            injected = await exchange(plain.port, b"GET /inject HTTP/1.1\r\nHost: x\r\n\r\n", read_for=1)
        assert injected.startswith(b"HTTP/1.1 500 ")
        assert b"Set-Cookie" not in injected
        return statuses

    caplog.set_level(logging.WARNING)
    assert run(go()) == [500, 500, 200, 503, 503, 200]
    assert "boom" in caplog.text


def test_stop_closes_idle_connections_and_cancels_pending_replies() -> None:
    """stop() ends kept-alive connections and replies still being made, and frees the port."""
    started = asyncio.Event()

    async def forever() -> Reply:
        started.set()
        await asyncio.sleep(3600)
        return Reply()

    async def go() -> None:
        server = HttpServer(lambda r: forever(), "127.0.0.1", 0)
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await started.wait()
        await asyncio.wait_for(server.stop(), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert server.open_connections == 0

    run(go())


def test_throttle_logs_one_line_per_interval_and_counts_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    """A burst of the same warning gives one line; the next line, after the interval, counts the ones held."""
    now = [0.0]
    throttle = Throttle(logging.getLogger("test.throttle"), interval=30.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="test.throttle")
    for _ in range(1000):
        throttle.warning("refused")
    now[0] = 31.0
    throttle.warning("refused")
    assert [r.getMessage() for r in caplog.records] == ["refused", "refused (and 999 more in the last 31 s)"]


SERVE_WITH_FEW_DESCRIPTORS = """
import asyncio, resource, sys
from lamina_batch.httpd import HttpServer, Limits, Reply

async def main() -> None:
    limits = Limits(max_connections=1000, idle_timeout=None, request_timeout=None)
    async with HttpServer(lambda r: Reply(200, b"ok", "text/plain"), "127.0.0.1", 0, limits=limits) as server:
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
        print(server.port, flush=True)
        loop = asyncio.get_running_loop()
        while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "count":
            print(server.stats.accept_errors, flush=True)

asyncio.run(main())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_NOFILE as Linux applies it")
def test_running_out_of_descriptors_pauses_accepting_with_one_log_line() -> None:
    """A server at its process's descriptor limit (40) with 120 connections waiting: accept fails again and
    again (it pauses a second each time), which is logged as one line, never a traceback; once descriptors are
    free again a new connection is served."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_WITH_FEW_DESCRIPTORS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        port = int(proc.stdout.readline())

        def accept_errors() -> int:
            proc.stdin.write("count\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            return int(proc.stdout.readline())  # type: ignore[union-attr]

        waiting = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(120)]
        deadline = time.monotonic() + 20
        while accept_errors() < 3 and time.monotonic() < deadline:  # EMFILE, a pause, again, again
            time.sleep(0.1)
        errors = accept_errors()
        for sock in waiting:
            sock.close()
        deadline = time.monotonic() + 20
        served = b""
        while time.monotonic() < deadline and not served.startswith(b"HTTP/1.1 200"):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                served = sock.recv(1024)
            time.sleep(0.2)
        _, stderr = proc.communicate("stop\n", timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert served.startswith(b"HTTP/1.1 200")
    assert errors >= 3
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, lines
    assert "HTTP server: cannot accept connections (Too many open files)" in lines[0]
