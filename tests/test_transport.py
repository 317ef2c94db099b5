"""H11Transport against small real servers on loopback: keep-alive, limits, framing, TLS, and every failure
coming out as the httpx exception the client's retry rules are written for."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import HostileServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lamina_batch.errors import ConfigError
from lamina_batch.transport import (
    H11Transport,
    HttpxAdapter,
    ReplyDeadlineError,
    ReplyTooLargeError,
    Target,
    TlsVerifyError,
    default_transport,
    env_proxy,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


class Server:
    """A loopback HTTP/1.1 server whose reply per request is written by the test; counts connections."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.open = 0
        self.peak = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                await self.handler(reader, writer, head + body)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


def reply(body: bytes = b'{"ok": true}', *, status: str = "200 OK", extra: bytes = b"") -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        writer.write(
            b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body
        )
        await writer.drain()
        if b"Connection: close" in extra:
            writer.close()

    return handler


def request(url: str, method: str = "GET", **timeouts: float) -> httpx.Request:
    limits = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0, **timeouts}
    return httpx.Request(method, url, extensions={"timeout": limits})


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    return asyncio.run(main())


def test_keeps_one_connection_alive_across_sequential_requests() -> None:
    """Sequential requests reuse one kept-alive connection and return status, headers and body."""

    async def go() -> None:
        async with Server(reply(b'{"n": 1}')) as server:
            transport = H11Transport()
            for _ in range(5):
                response = await transport.handle_async_request(request(server.url + "/v1/apps"))
                assert response.status_code == 200
                assert response.json() == {"n": 1}
                assert response.headers["content-type"] == "application/json"
            await transport.aclose()
            assert server.connections == 1

    run(go())


def test_sends_method_path_query_headers_and_body() -> None:
    """A POST carries its target with the query, Host, the caller's headers and a Content-Length body."""

    async def go() -> None:
        async with Server(reply()) as server:
            transport = H11Transport()
            req = httpx.Request(
                "POST",
                server.url + "/v1/apps/app%201/runs",
                params={"webhook": "https://x.test/h?a=1"},
                headers={"Authorization": "Bearer k"},
                json={"inputs": {"Prompt": "é"}},
                extensions={"timeout": {"read": 5.0}},
            )
            await transport.handle_async_request(req)
            await transport.aclose()
        sent = server.requests[0]
        assert sent.startswith(b"POST /v1/apps/app%201/runs?webhook=https%3A%2F%2Fx.test%2Fh%3Fa%3D1 HTTP/1.1\r\n")
        assert b"\r\nhost: 127.0.0.1:" in sent.lower()
        assert b"\r\nauthorization: bearer k\r\n" in sent.lower()
        assert f"\r\ncontent-length: {len(req.content)}\r\n".encode() in sent.lower()
        assert sent.endswith(b"\r\n\r\n" + req.content)

    run(go())


def test_never_holds_more_connections_than_the_limit() -> None:
    """Twelve concurrent requests over max_connections=3 all complete, with at most 3 sockets open."""

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        await asyncio.sleep(0.02)
        await reply()(reader, writer, request)

    async def go() -> None:
        async with Server(slow) as server:
            transport = H11Transport(max_connections=3)
            replies = await asyncio.gather(
                *(transport.handle_async_request(request(server.url + f"/r{i}")) for i in range(12))
            )
            await transport.aclose()
            assert [r.status_code for r in replies] == [200] * 12
            assert server.peak <= 3
            assert server.connections == 3

    run(go())


def test_connection_close_reply_is_not_reused() -> None:
    """A reply with `Connection: close` ends that connection; the next request opens a fresh one."""

    async def go() -> None:
        async with Server(reply(extra=b"Connection: close\r\n")) as server:
            transport = H11Transport()
            for _ in range(2):
                assert (await transport.handle_async_request(request(server.url + "/"))).status_code == 200
            await transport.aclose()
            assert server.connections == 2

    run(go())


def test_chunked_reply_is_reassembled() -> None:
    """A chunked reply body arrives whole, and the connection stays usable after it."""

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        writer.write(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n')
        await writer.drain()

    async def go() -> None:
        async with Server(chunked) as server:
            transport = H11Transport()
            first = await transport.handle_async_request(request(server.url + "/"))
            second = await transport.handle_async_request(request(server.url + "/"))
            await transport.aclose()
            assert first.json() == {"a": 1} == second.json()
            assert server.connections == 1

    run(go())


def test_idle_connection_past_its_expiry_is_replaced() -> None:
    """A connection idle longer than keepalive_expiry is closed, not reused (the server may have dropped it)."""
    now = [0.0]

    async def go() -> None:
        async with Server(reply()) as server:
            transport = H11Transport(keepalive_expiry=5.0, clock=lambda: now[0])
            await transport.handle_async_request(request(server.url + "/"))
            now[0] = 4.0
            await transport.handle_async_request(request(server.url + "/"))
            assert server.connections == 1
            now[0] = 10.0
            await transport.handle_async_request(request(server.url + "/"))
            await transport.aclose()
            assert server.connections == 2

    run(go())


def test_refused_connection_is_connect_error() -> None:
    """Nothing listening: httpx.ConnectError (the client may resend: nothing reached the server)."""

    async def go() -> None:
        async with Server(reply()) as server:
            url = server.url
        transport = H11Transport()
        with pytest.raises(httpx.ConnectError):
            await transport.handle_async_request(request(url + "/"))

    run(go())


def test_silent_server_is_read_timeout() -> None:
    """A server that accepts the request and never answers: httpx.ReadTimeout after the read timeout."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        await asyncio.sleep(5)

    async def go() -> None:
        async with Server(silent) as server:
            transport = H11Transport()
            with pytest.raises(httpx.ReadTimeout):
                await transport.handle_async_request(request(server.url + "/", read=0.05))
            await transport.aclose()

    run(go())


def test_reply_cut_short_is_a_transport_error_not_connect_error() -> None:
    """The server closes half-way through its reply: a read/protocol error (sent, outcome unknown)."""

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        writer.write(b'HTTP/1.1 202 Accepted\r\nContent-Length: 100\r\n\r\n{"data":')
        await writer.drain()
        writer.close()

    async def go() -> None:
        async with Server(cut) as server:
            transport = H11Transport()
            with pytest.raises(httpx.TransportError) as info:
                await transport.handle_async_request(request(server.url + "/", "POST"))
            await transport.aclose()
        assert isinstance(info.value, httpx.ReadError | httpx.RemoteProtocolError)
        assert not isinstance(info.value, httpx.ConnectError)

    run(go())


def test_malformed_reply_is_remote_protocol_error() -> None:
    """Bytes that are not HTTP: httpx.RemoteProtocolError."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        writer.write(b"SPDY/9 banana\r\n\r\n")
        await writer.drain()

    async def go() -> None:
        async with Server(garbage) as server:
            transport = H11Transport()
            with pytest.raises(httpx.RemoteProtocolError):
                await transport.handle_async_request(request(server.url + "/"))
            await transport.aclose()

    run(go())


def test_waiting_for_a_connection_times_out_as_pool_timeout() -> None:
    """With the only connection busy, a second request gives up after the pool timeout: httpx.PoolTimeout."""

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        await asyncio.sleep(0.5)
        await reply()(reader, writer, request)

    async def go() -> None:
        async with Server(slow) as server:
            transport = H11Transport(max_connections=1)
            first = asyncio.ensure_future(transport.handle_async_request(request(server.url + "/a")))
            await asyncio.sleep(0)
            with pytest.raises(httpx.PoolTimeout):
                await transport.handle_async_request(request(server.url + "/b", pool=0.05))
            assert (await first).status_code == 200
            await transport.aclose()

    run(go())


def test_cancelled_request_frees_its_connection_slot() -> None:
    """Cancelling a request mid-reply closes that connection and frees its slot for the next request."""
    hang = [True]
    arrived = asyncio.Event()

    async def maybe_hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        if hang[0]:
            hang[0] = False
            arrived.set()
            await asyncio.sleep(5)
        await reply()(reader, writer, request)

    async def go() -> None:
        async with Server(maybe_hang) as server:
            transport = H11Transport(max_connections=1)
            task = asyncio.ensure_future(transport.handle_async_request(request(server.url + "/")))
            await arrived.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            response = await transport.handle_async_request(request(server.url + "/", pool=1.0))
            await transport.aclose()
            assert response.status_code == 200
            assert server.connections == 2

    run(go())


def _self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


def test_https_verifies_the_server_certificate(tmp_path: Path) -> None:
    """Over TLS a trusted certificate works; an untrusted one fails before anything is sent (ConnectError)."""
    server_tls, client_tls = _self_signed(tmp_path)

    async def go() -> None:
        async with Server(reply(b'{"tls": true}'), tls=server_tls) as server:
            trusted = H11Transport(verify=client_tls)
            response = await trusted.handle_async_request(request(server.url + "/v1/apps"))
            assert response.json() == {"tls": True}
            await trusted.aclose()
            untrusted = H11Transport()  # httpx's CA bundle: does not know our certificate
            with pytest.raises(httpx.ConnectError):
                await untrusted.handle_async_request(request(server.url + "/v1/apps"))
            await untrusted.aclose()
            assert len(server.requests) == 1

    run(go())


def test_other_schemes_are_refused() -> None:
    """A URL that is not http(s) is refused as httpx.UnsupportedProtocol."""
    with pytest.raises(httpx.UnsupportedProtocol):
        run(H11Transport().handle_async_request(request("ftp://127.0.0.1/x")))


def test_a_configured_proxy_selects_httpx_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY routes through httpx's transport (which speaks proxies); NO_PROXY for the host does not."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert env_proxy("https://app.uselamina.ai") is None
    assert isinstance(default_transport("https://app.uselamina.ai", 8), H11Transport)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert env_proxy("https://app.uselamina.ai") == "http://proxy.internal:3128"
    assert isinstance(default_transport("https://app.uselamina.ai", 8), httpx.AsyncHTTPTransport)
    monkeypatch.setenv("NO_PROXY", "app.uselamina.ai")
    assert env_proxy("https://app.uselamina.ai") is None
    assert isinstance(default_transport("https://app.uselamina.ai", 8), H11Transport)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    assert env_proxy("http://127.0.0.1:8900") is None  # the emulator is never proxied
    assert env_proxy("http://localhost:8900") is None


def test_closing_with_a_request_in_flight_lets_it_finish_and_closes_its_connection() -> None:
    """aclose() while a request is in flight: that request still completes, then its connection is closed."""
    arrived = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        arrived.set()
        await asyncio.sleep(0.05)
        await reply()(reader, writer, request)

    async def go() -> None:
        async with Server(slow) as server:
            transport = H11Transport()
            pending = asyncio.ensure_future(transport.handle_async_request(request(server.url + "/")))
            await arrived.wait()
            await transport.aclose()
            assert (await pending).status_code == 200
            with pytest.raises(RuntimeError, match="closed"):
                await transport.handle_async_request(request(server.url + "/"))
            for _ in range(100):  # the server sees the connection end
                if server.open == 0:
                    break
                await asyncio.sleep(0.01)
            assert server.open == 0

    run(go())


def test_an_unusable_proxy_is_a_config_error_that_hides_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unusable proxy URL is a ConfigError naming the variables, never echoing the URL (it may hold a password)."""
    for name in ("HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "not a url with s3cret")
    with pytest.raises(ConfigError) as info:
        default_transport("https://app.uselamina.ai", 8)
    text = str(info.value)
    assert "HTTPS_PROXY" in text
    assert "s3cret" not in text


def test_client_sends_the_same_request_directly_as_through_httpx() -> None:
    """LaminaClient's direct path (H11Transport.send) puts the same request on the wire as the httpx path,
    base-URL path prefix, escaped path, query and JSON body included, and reads the reply the same way."""
    from lamina_batch.client import LaminaClient
    from lamina_batch.models import Rate

    class Wrapped(httpx.AsyncBaseTransport):
        """The same transport behind the plain httpx interface (what a proxy's or a test's transport gets)."""

        def __init__(self) -> None:
            self.inner = H11Transport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return await self.inner.handle_async_request(request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    body = b'{"data": {"runId": "run_1", "status": "queued", "outputs": []}}'
    seen: list[list[bytes]] = []
    for transport in (None, Wrapped()):

        async def go(transport: httpx.AsyncBaseTransport | None = transport) -> None:
            async with Server(reply(body)) as server:
                client = LaminaClient(server.url + "/prefix/", "lma_" + "k" * 24, "runs", Rate(100, 1), transport)
                run_ = await client.start(
                    "app 1", {"Prompt": "é"}, outputs=["Hero Image"], webhook="https://x.test/h?a=1"
                )
                assert run_.run_id == "run_1"
                await client.aclose()
            seen.append(server.requests)

        run(go())
    import re

    direct, via_httpx = ([re.sub(rb"127\.0\.0\.1:\d+", b"HOST", r) for r in reqs] for reqs in seen)
    assert direct == via_httpx, (direct, via_httpx)
    assert direct[0].startswith(b"POST /prefix/v1/apps/app%201/runs?webhook=https%3A%2F%2Fx.test%2Fh%3Fa%3D1 HTTP/1.1")


def test_client_direct_path_maps_error_replies_like_httpx() -> None:
    """A 404 and a 429 with Retry-After arriving on the direct path become NotFoundError and RateLimitedError."""
    from lamina_batch.client import LaminaClient
    from lamina_batch.errors import NotFoundError, RateLimitedError
    from lamina_batch.models import Rate
    from lamina_batch.retry import RetryPolicy

    async def go() -> None:
        async with Server(reply(b'{"error": "App not found", "code": "NOT_FOUND"}', status="404 Not Found")) as s404:
            client = LaminaClient(s404.url, "lma_" + "k" * 24, "runs", Rate(100, 1))
            with pytest.raises(NotFoundError, match="App not found"):
                await client.get_app("app_x")
            await client.aclose()
        limited = reply(b'{"error": "slow down"}', status="429 Too Many Requests", extra=b"Retry-After: 7\r\n")
        async with Server(limited) as s429:
            client = LaminaClient(
                s429.url, "lma_" + "k" * 24, "runs", Rate(100, 1), retry_policy=RetryPolicy(max_attempts=1)
            )
            with pytest.raises(RateLimitedError) as info:
                await client.get_app("app_x")
            assert info.value.retry_after == 7
            await client.aclose()

    run(go())


# ---------------------------------------------------------------------------- bounded replies (issue 19.3)

TIMEOUTS = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}


def raw_transport(via: str, max_reply: int) -> H11Transport | HttpxAdapter:
    """H11Transport itself, or httpx's own transport behind HttpxAdapter (the proxy path)."""
    if via == "h11":
        return H11Transport(max_reply=max_reply)
    return HttpxAdapter(httpx.AsyncHTTPTransport(), max_reply=max_reply)


@pytest.mark.parametrize("via", ["h11", "httpx"])
def test_an_endless_reply_is_cut_at_max_reply(via: str) -> None:
    """An endless chunked reply ends in ReplyTooLargeError once past max_reply, long before the server stops
    sending, on both transports; the connection is dropped."""

    async def go() -> int:
        async with HostileServer("endless") as server:
            raw = raw_transport(via, 1024 * 1024)
            async with asyncio.timeout(30):
                with pytest.raises(ReplyTooLargeError, match="larger than 1 MiB"):
                    await raw.send(b"GET", Target.of(httpx.URL(server.url)), b"/v1/apps/x", [], b"", TIMEOUTS)
            await raw.aclose()
            return server.sent

    assert run(go()) < 32 * 1024 * 1024  # the server gave up half-way through its 64 MiB: nobody read it


@pytest.mark.parametrize("via", ["h11", "httpx"])
def test_a_trickled_reply_is_cut_at_the_deadline(via: str) -> None:
    """A reply sent a byte every 0.2 s never trips the read timeout (5 s between bytes) but ends at the
    deadline (1 s) in ReplyDeadlineError, an httpx.ReadTimeout: sent, outcome unknown."""

    timeouts = {**TIMEOUTS, "connect": 1.0, "pool": 1.0}  # the httpx path adds these to the deadline

    async def go() -> float:
        async with HostileServer("drip", gap=0.2) as server:
            raw = raw_transport(via, 1024 * 1024)
            loop = asyncio.get_running_loop()
            started = loop.time()
            target = Target.of(httpx.URL(server.url))
            try:
                with pytest.raises(ReplyDeadlineError) as info:
                    await raw.send(b"GET", target, b"/v1/runs/r", [], b"", timeouts, deadline=1.0)
            finally:
                await raw.aclose()
            assert isinstance(info.value, httpx.ReadTimeout)
            return loop.time() - started

    assert run(go()) < 6.0  # the drip would last 10 s


def test_after_send_runs_between_writing_the_request_and_reading_the_reply() -> None:
    """after_send is called once the request is written and before the reply is read, on both transports."""
    order: list[str] = []

    async def note(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        order.append("server got request")
        await reply()(reader, writer, request)

    async def go() -> None:
        async with Server(note) as server:
            for via in ("h11", "httpx"):
                raw = raw_transport(via, 1024)
                target = Target.of(httpx.URL(server.url))
                headers = [(b"Content-Length", b"2")]
                await raw.send(
                    b"POST", target, b"/x", headers, b"{}", TIMEOUTS, after_send=lambda via=via: order.append(via)
                )
                await raw.aclose()

    run(go())
    assert order == ["h11", "server got request", "httpx", "server got request"]


def test_tls_verification_failure_is_its_own_error_on_both_transports(tmp_path: Path) -> None:
    """An untrusted certificate is TlsVerifyError (an httpx.ConnectError: nothing was sent) on H11Transport and
    behind HttpxAdapter alike."""
    server_tls, _ = _self_signed(tmp_path)

    async def go() -> None:
        async with Server(reply(), tls=server_tls) as server:
            for via in ("h11", "httpx"):
                raw = raw_transport(via, 1024)
                with pytest.raises(TlsVerifyError, match="certificate"):
                    await raw.send(b"GET", Target.of(httpx.URL(server.url)), b"/", [], b"", TIMEOUTS)
                await raw.aclose()
            assert server.requests == []

    run(go())


def test_a_malformed_proxy_url_is_one_config_error_without_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY=http://user:pw@[::1 (an unclosed IPv6 bracket) is a ConfigError, never an internal error,
    and the password is not in it."""
    for name in ("HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw5ecret@[::1")
    with pytest.raises(ConfigError) as info:
        default_transport("https://app.uselamina.ai", 8)
    assert "pw5ecret" not in str(info.value)
    assert "\n" not in str(info.value)


def test_after_send_runs_once_the_request_is_written_and_before_its_reply_is_read() -> None:
    """send(after_send=hook) calls hook once, after the request is written and before its reply is read."""
    hooked = asyncio.Event()
    calls: list[int] = []

    async def after_hook(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        await asyncio.wait_for(hooked.wait(), 5)  # the hook fires without the reply: it is not waiting for it
        await reply()(reader, writer, request)

    def hook() -> None:
        calls.append(len(server.requests))  # how many requests the server had whole when it ran
        hooked.set()

    async def go() -> None:
        transport = H11Transport()
        url = httpx.URL(server.url)
        target = Target.of(url)
        limits = {"connect": 5.0, "read": 5.0, "pool": 5.0}
        raw = await transport.send(b"POST", target, b"/start", [], b"{}", limits, after_send=hook)
        assert raw.status == 200
        plain = await transport.send(b"GET", target, b"/status", [], b"", limits)
        assert plain.status == 200
        assert calls == [0]  # once, for the request that asked; called before the server had read it
        await transport.aclose()

    server = Server(after_hook)

    async def main() -> None:
        async with server:
            await go()

    run(main())
