"""Tests for lamina_batch.webhooks: Ed25519 verification, the signing-key cache, and the loopback receiver."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from lamina_batch.webhooks import (
    Delivery,
    SigningKeys,
    WebhookReceiver,
    WebhookRejected,
    parse_jwks,
    verify_delivery,
)

T = TypeVar("T")
NOW = 1_700_000_000.0
RUN_ID = "run_abc123"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def jwk(priv: Ed25519PrivateKey, kid: str = "lamina-webhook-v1") -> dict[str, str]:
    raw = priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA"}


def status_body(run_id: str = RUN_ID, *, wrapped: bool = True, id_field: str = "runId") -> bytes:
    data = {
        id_field: run_id,
        "status": "completed",
        "errorMessage": None,
        "createdAt": "2024-01-01T00:00:00Z",
        "startedAt": "2024-01-01T00:00:01Z",
        "completedAt": "2024-01-01T00:00:09Z",
        "outputs": [
            {
                "id": "aiDesignerNode-1",
                "label": "Hero Image",
                "type": "image",
                "value": "https://cdn.example/generated.png",
                "status": "completed",
                "error": None,
            }
        ],
    }
    return json.dumps({"data": data} if wrapped else data).encode()


def signed_headers(
    priv: Ed25519PrivateKey, body: bytes, *, ts: float = NOW, request_id: str = RUN_ID
) -> dict[str, str]:
    t = str(int(ts))
    sig = priv.sign(t.encode() + b"." + body).hex()
    return {
        "X-Lamina-Webhook-Signature": sig,
        "X-Lamina-Webhook-Timestamp": t,
        "X-Lamina-Webhook-Request-Id": request_id,
        "X-Lamina-Webhook-User-Id": "user_1",
    }


@pytest.fixture
def priv() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def pub(p: Ed25519PrivateKey) -> Ed25519PublicKey:
    return p.public_key()


def reject(headers: dict[str, str], body: bytes, keys: list[Ed25519PublicKey], **kw: Any) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as ei:
        verify_delivery(headers, body, keys, now=kw.pop("now", NOW), **kw)
    return ei.value


# --------------------------------------------------------------------------- parse_jwks


def test_parse_jwks_keeps_only_ed25519(priv: Ed25519PrivateKey) -> None:
    """Only OKP/Ed25519 keys with a valid 32-byte unpadded base64url x are kept."""
    good = jwk(priv)
    keys = parse_jwks(
        {
            "keys": [
                {"kty": "RSA", "n": "abc", "e": "AQAB"},
                {"kty": "OKP", "crv": "X25519", "x": good["x"]},
                {"kty": "OKP", "crv": "Ed25519", "x": "too-short"},
                {"kty": "OKP", "crv": "Ed25519"},
                "junk",
                good,
            ]
        }
    )
    assert len(keys) == 1
    assert keys[0].public_bytes(Encoding.Raw, PublicFormat.Raw) == pub(priv).public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )
    assert len(parse_jwks([good])) == 1
    assert parse_jwks({"nope": 1}) == []
    assert parse_jwks("x") == []


# --------------------------------------------------------------------------- verify_delivery


def test_valid_delivery_parsed(priv: Ed25519PrivateKey) -> None:
    """A correctly signed, fresh delivery yields the run from the body with its outputs."""
    body = status_body()
    d = verify_delivery(signed_headers(priv, body), body, [pub(priv)], now=NOW)
    assert isinstance(d, Delivery)
    assert d.request_id == RUN_ID
    assert d.timestamp == int(NOW)
    assert d.user_id == "user_1"
    assert d.run.run_id == RUN_ID
    assert d.run.status == "completed"
    assert d.run.terminal
    assert d.run.outputs[0].value == "https://cdn.example/generated.png"
    assert d.run.completed_at == "2024-01-01T00:00:09Z"


def test_bare_body_and_execution_id_accepted(priv: Ed25519PrivateKey) -> None:
    """The body may be the bare run object and carry executionId instead of runId."""
    body = status_body(wrapped=False, id_field="executionId")
    d = verify_delivery(signed_headers(priv, body), body, [pub(priv)], now=NOW)
    assert d.run.run_id == RUN_ID


def test_headers_are_case_insensitive(priv: Ed25519PrivateKey) -> None:
    """Header names match whatever their case."""
    body = status_body()
    headers = {k.lower(): v for k, v in signed_headers(priv, body).items()}
    headers = {k.upper() if "signature" in k else k: v for k, v in headers.items()}
    assert verify_delivery(headers, body, [pub(priv)], now=NOW).request_id == RUN_ID


def test_tampered_body_rejected(priv: Ed25519PrivateKey) -> None:
    """Changing one byte of the signed body makes it 401."""
    body = status_body()
    headers = signed_headers(priv, body)
    tampered = body.replace(b"completed", b"Completed", 1)
    e = reject(headers, tampered, [pub(priv)])
    assert (e.status, e.reason) == (401, "bad signature")


def test_tampered_timestamp_rejected(priv: Ed25519PrivateKey) -> None:
    """The timestamp is part of the signed message: changing it breaks the signature."""
    body = status_body()
    headers = signed_headers(priv, body)
    headers["X-Lamina-Webhook-Timestamp"] = str(int(NOW) + 1)
    assert reject(headers, body, [pub(priv)]).status == 401


def test_wrong_key_rejected(priv: Ed25519PrivateKey) -> None:
    """A signature by another key does not verify."""
    body = status_body()
    other = Ed25519PrivateKey.generate()
    e = reject(signed_headers(other, body), body, [pub(priv)])
    assert (e.status, e.reason) == (401, "bad signature")
    assert reject(signed_headers(priv, body), body, []).status == 401


def test_valid_under_second_key_of_set(priv: Ed25519PrivateKey) -> None:
    """A signature that verifies under any key of the set (here the second) is accepted."""
    body = status_body()
    first = Ed25519PrivateKey.generate()
    d = verify_delivery(signed_headers(priv, body), body, [pub(first), pub(priv)], now=NOW)
    assert d.request_id == RUN_ID


@pytest.mark.parametrize(
    "missing", ["X-Lamina-Webhook-Signature", "X-Lamina-Webhook-Timestamp", "X-Lamina-Webhook-Request-Id"]
)
def test_missing_headers_400(priv: Ed25519PrivateKey, missing: str) -> None:
    """Each required header missing gives 400 naming it."""
    body = status_body()
    headers = signed_headers(priv, body)
    del headers[missing]
    e = reject(headers, body, [pub(priv)])
    assert e.status == 400
    assert missing.lower() in str(e)


@pytest.mark.parametrize(("offset", "ok"), [(301, False), (-301, False), (299, True), (-299, True)])
def test_timestamp_tolerance(priv: Ed25519PrivateKey, offset: int, ok: bool) -> None:
    """Timestamps more than 300 s off in either direction are 401; within 300 s they pass."""
    body = status_body()
    headers = signed_headers(priv, body, ts=NOW + offset)
    if ok:
        assert verify_delivery(headers, body, [pub(priv)], now=NOW).request_id == RUN_ID
    else:
        e = reject(headers, body, [pub(priv)])
        assert (e.status, e.reason) == (401, "timestamp outside tolerance")


def test_non_numeric_timestamp_400(priv: Ed25519PrivateKey) -> None:
    """A timestamp that is not unix seconds is a malformed request."""
    body = status_body()
    headers = signed_headers(priv, body)
    headers["X-Lamina-Webhook-Timestamp"] = "yesterday"
    assert reject(headers, body, [pub(priv)]).status == 400


def test_run_id_mismatch_400(priv: Ed25519PrivateKey) -> None:
    """A body whose run id differs from the signed Request-Id header is 400, even when signed."""
    body = status_body("run_other")
    e = reject(signed_headers(priv, body, request_id=RUN_ID), body, [pub(priv)])
    assert (e.status, e.reason) == (400, "run id does not match request id")


def test_oversized_body_413(priv: Ed25519PrivateKey) -> None:
    """A body over the cap is 413 before any signature work."""
    body = status_body() + b" " * 2000
    e = reject(signed_headers(priv, body), body, [pub(priv)], max_body=1000)
    assert e.status == 413


@pytest.mark.parametrize("sig", ["zz" * 64, "abc", "00" * 10])
def test_bad_hex_signature_401(priv: Ed25519PrivateKey, sig: str) -> None:
    """A signature that is not 64 bytes of hex is 401."""
    body = status_body()
    headers = signed_headers(priv, body)
    headers["X-Lamina-Webhook-Signature"] = sig
    assert reject(headers, body, [pub(priv)]).status == 401


@pytest.mark.parametrize("body", [b"not json", b"[1,2]", b'{"data": {"status": "completed"}}', b"\xff\xfe"])
def test_signed_but_unparsable_body_400(priv: Ed25519PrivateKey, body: bytes) -> None:
    """A body that verifies but is not a run object is 400."""
    e = reject(signed_headers(priv, body), body, [pub(priv)])
    assert (e.status, e.reason) == (400, "body is not a run")


# --------------------------------------------------------------------------- SigningKeys


def test_signing_keys_fetched_once_then_cached(tmp_path: Path, priv: Ed25519PrivateKey) -> None:
    """Without a cache the key set is fetched and cached; the next load reads the cache, no fetch."""
    calls = 0

    async def fetch() -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        return [jwk(priv)]

    cache = tmp_path / "keys.json"

    async def go() -> None:
        k1 = await SigningKeys.load(cache, fetch)
        assert len(k1.keys) == 1
        assert json.loads(cache.read_text())["keys"][0]["x"] == jwk(priv)["x"]
        k2 = await SigningKeys.load(cache, fetch)
        assert len(k2.keys) == 1

    run(go())
    assert calls == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]


def test_signing_keys_corrupt_cache_refetched(tmp_path: Path, priv: Ed25519PrivateKey) -> None:
    """A corrupt cache file is replaced by a fresh fetch."""
    cache = tmp_path / "keys.json"
    cache.write_text("{broken")

    async def fetch() -> list[dict[str, Any]]:
        return [jwk(priv)]

    keys = run(SigningKeys.load(cache, fetch))
    assert len(keys.keys) == 1
    assert json.loads(cache.read_text())["keys"]


def test_signing_keys_refresh_rate_limited(tmp_path: Path, priv: Ed25519PrivateKey) -> None:
    """refresh refetches at most once per interval, and picks up a rotated key."""
    rotated = Ed25519PrivateKey.generate()
    served = [jwk(priv)]
    calls = 0
    clock = [100.0]

    async def fetch() -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        return list(served)

    async def go() -> None:
        keys = await SigningKeys.load(tmp_path / "k.json", fetch, clock=lambda: clock[0])
        served.append(jwk(rotated, "v2"))
        assert not await keys.refresh()  # fetched just now
        clock[0] += 61
        assert await keys.refresh()
        assert len(keys.keys) == 2
        assert not await keys.refresh()

    run(go())
    assert calls == 2


# --------------------------------------------------------------------------- the receiver over loopback


class Sink:
    """A delivery callback with callback-level dedup, the pattern the executor follows with the manifest."""

    def __init__(self, fail: bool = False) -> None:
        self.seen: set[str] = set()
        self.calls: list[Delivery] = []
        self.fail = fail

    async def __call__(self, d: Delivery) -> bool:
        self.calls.append(d)
        if self.fail:
            raise RuntimeError("disk full")
        if d.request_id in self.seen:
            return False
        self.seen.add(d.request_id)
        return True


def test_receiver_end_to_end(priv: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture) -> None:
    """Over a real loopback socket: valid -> 200, replay -> 200 duplicate, forged/stale/huge -> 4xx, no body logged."""
    sink = Sink()
    caplog.set_level(logging.DEBUG, logger="lamina_batch.webhooks")

    async def go() -> WebhookReceiver:
        recv = WebhookReceiver("127.0.0.1", 0, SigningKeys([pub(priv)]), sink, clock=lambda: NOW, max_body=4096)
        async with recv:
            assert recv.port > 0
            url = f"http://127.0.0.1:{recv.port}/hooks/lamina"
            async with httpx.AsyncClient() as http:
                body = status_body()
                r = await http.post(url, content=body, headers=signed_headers(priv, body))
                assert r.status_code == 200
                assert r.json() == {"ok": True}
                # A retry is signed afresh: passed to the callback again, which reports it as a duplicate.
                r = await http.post(url, content=body, headers=signed_headers(priv, body, ts=NOW + 5))
                assert r.status_code == 200
                assert r.json()["duplicate"] is True
                # Keep-alive: same client, more requests on the pooled connection.
                forged = status_body("run_evil")
                headers = signed_headers(Ed25519PrivateKey.generate(), forged, request_id="run_evil")
                r = await http.post(url, content=forged, headers=headers)
                assert r.status_code == 401
                assert r.json() == {"error": "bad signature"}
                r = await http.post(url, content=body, headers=signed_headers(priv, body, ts=NOW - 400))
                assert r.status_code == 401
                r = await http.post(url, content=body, headers={"X-Lamina-Webhook-Request-Id": RUN_ID})
                assert r.status_code == 400
                big = b"x" * 5000
                r = await http.post(url, content=big, headers=signed_headers(priv, big))
                assert r.status_code == 413
                r = await http.get(url)
                assert r.status_code == 405
        return recv

    recv = run(go())
    assert len(sink.calls) == 2
    assert sink.seen == {RUN_ID}
    assert recv.stats.accepted == 1
    assert recv.stats.duplicates == 1
    assert recv.stats.rejected["bad signature"] == 1
    assert recv.stats.rejected["timestamp outside tolerance"] == 1
    assert recv.stats.rejected["missing header"] == 1
    assert recv.stats.rejected["body too large"] == 1
    assert "rejected" in caplog.text
    assert "Hero Image" not in caplog.text
    assert "generated.png" not in caplog.text


def test_receiver_callback_failure_is_500(priv: Ed25519PrivateKey) -> None:
    """An exception in on_delivery answers 500, so Lamina retries the delivery."""
    sink = Sink(fail=True)

    async def go() -> int:
        recv = WebhookReceiver("127.0.0.1", 0, SigningKeys([pub(priv)]), sink, clock=lambda: NOW)
        async with recv, httpx.AsyncClient() as http:
            body = status_body()
            r = await http.post(f"http://127.0.0.1:{recv.port}/", content=body, headers=signed_headers(priv, body))
            assert recv.stats.errors == 1
            return r.status_code

    assert run(go()) == 500
    assert len(sink.calls) == 1


def test_receiver_refreshes_keys_once_on_unknown_signer(tmp_path: Path, priv: Ed25519PrivateKey) -> None:
    """A delivery signed by a rotated key is accepted after one key refetch; further forgeries fetch nothing."""
    rotated = Ed25519PrivateKey.generate()
    cache = tmp_path / "keys.json"
    cache.write_text(json.dumps({"keys": [jwk(priv)]}))
    fetches = 0

    async def fetch() -> list[dict[str, Any]]:
        nonlocal fetches
        fetches += 1
        return [jwk(priv), jwk(rotated, "v2")]

    sink = Sink()

    async def go() -> list[int]:
        keys = await SigningKeys.load(cache, fetch, clock=lambda: 0.0)
        assert fetches == 0
        codes = []
        async with WebhookReceiver("127.0.0.1", 0, keys, sink, clock=lambda: NOW) as recv:
            url = f"http://127.0.0.1:{recv.port}/"
            async with httpx.AsyncClient() as http:
                body = status_body()
                r = await http.post(url, content=body, headers=signed_headers(rotated, body))
                codes.append(r.status_code)
                forged = status_body("run_x")
                for _ in range(3):
                    h = signed_headers(Ed25519PrivateKey.generate(), forged, request_id="run_x")
                    r = await http.post(url, content=forged, headers=h)
                    codes.append(r.status_code)
        return codes

    assert run(go()) == [200, 401, 401, 401]
    assert fetches == 1
    assert len(json.loads(cache.read_text())["keys"]) == 2


def test_receiver_requires_content_length() -> None:
    """A POST without Content-Length (chunked) gets 411 and never reaches the callback."""
    sink = Sink()

    async def go() -> bytes:
        async with WebhookReceiver("127.0.0.1", 0, SigningKeys([]), sink) as recv:
            reader, writer = await asyncio.open_connection("127.0.0.1", recv.port)
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            await writer.drain()
            data = await reader.read()
            writer.close()
            await writer.wait_closed()
            return data

    assert run(go()).startswith(b"HTTP/1.1 411 ")
    assert sink.calls == []


def test_receiver_refuses_oversized_declared_length_without_reading() -> None:
    """A declared Content-Length over the cap is answered 413 at once, without waiting for the body."""

    async def go() -> bytes:
        async with WebhookReceiver("127.0.0.1", 0, SigningKeys([]), Sink(), max_body=100) as recv:
            reader, writer = await asyncio.open_connection("127.0.0.1", recv.port)
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await writer.wait_closed()
            return data

    assert run(go()).startswith(b"HTTP/1.1 413 ")


def test_a_signed_body_without_a_status_is_a_delivery_that_completes_nothing(priv: Ed25519PrivateKey) -> None:
    """wire.py's rule holds for webhooks too: a run with no status reads as "queued" (not terminal), so the
    delivery is recorded but ends nothing; the run is followed by polling as usual."""
    body = json.dumps({"data": {"runId": RUN_ID, "outputs": []}}).encode()
    d = verify_delivery(signed_headers(priv, body), body, [pub(priv)], now=NOW)
    assert d.run.status == "queued"
    assert not d.run.terminal


def test_forged_deliveries_log_one_line_per_interval(priv: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture) -> None:
    """Thirty forged deliveries are all refused and counted, but logged as one warning line, not thirty."""
    caplog.set_level(logging.WARNING, logger="lamina_batch.webhooks")

    async def go() -> WebhookReceiver:
        recv = WebhookReceiver("127.0.0.1", 0, SigningKeys([pub(priv)]), Sink(), clock=lambda: NOW)
        async with recv, httpx.AsyncClient() as http:
            for i in range(30):
                forged = status_body(f"run_{i}")
                headers = signed_headers(Ed25519PrivateKey.generate(), forged, request_id=f"run_{i}")
                r = await http.post(f"http://127.0.0.1:{recv.port}/", content=forged, headers=headers)
                assert r.status_code == 401
        return recv

    recv = run(go())
    assert recv.stats.rejected["bad signature"] == 30
    lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert lines == ["webhook delivery rejected: HTTP 401 bad signature (request id 'run_0')"]


def test_receiver_caps_connections_and_bounds_slow_clients() -> None:
    """Past max_connections a new connection is closed at once; an idle connection is closed after
    header_timeout, and a request still arriving after body_timeout is answered 408."""

    async def go() -> None:
        recv = WebhookReceiver(
            "127.0.0.1", 0, SigningKeys([]), Sink(), max_connections=2, header_timeout=0.3, body_timeout=0.3
        )
        async with recv:
            held = [await asyncio.open_connection("127.0.0.1", recv.port) for _ in range(2)]
            reader, writer = await asyncio.open_connection("127.0.0.1", recv.port)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # the third: closed, nothing said
            writer.close()
            slow_reader, slow_writer = held[0]
            slow_writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            assert (await asyncio.wait_for(slow_reader.read(), 5)).startswith(b"HTTP/1.1 408 ")
            assert await asyncio.wait_for(held[1][0].read(), 5) == b""  # idle: closed
            for _, w in held:
                w.close()
            assert recv.server.stats.refused == 1

    run(go())
