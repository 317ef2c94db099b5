"""Integration tests of the Lamina emulator over real loopback sockets, using httpx directly."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from helpers import wait_for, wait_for_async

from lamina_batch.emulator import AppDef, Emulator, EmulatorConfig, Faults, OutputDef, ParamDef, banner, serve
from lamina_batch.emulator.png import COLOURS
from lamina_batch.emulator.runs import epoch_ms, iso

MakeEmu = Callable[..., Emulator]
HERO = "app_7Hk2"


def api(emu: Emulator, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=emu.base_url, headers={"Authorization": f"Bearer {emu.key}"}, timeout=10, **kw)


def start(c: httpx.Client, app: str = HERO, inputs: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    r = c.post(f"/v1/apps/{app}/runs", json={"inputs": inputs or {"Prompt": "a mug"}}, **kw)
    assert r.status_code == 202, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    wait_for(cond, timeout)


def status_when(c: httpx.Client, rid: str, status: str) -> dict[str, Any]:
    """The run's status body, polled until it reads `status`."""
    seen: dict[str, Any] = {}

    def reads() -> bool:
        seen.update(c.get(f"/v1/runs/{rid}").json()["data"])
        return seen["status"] == status

    until(reads)
    return seen


def now_iso() -> str:
    """The current time as the emulator's timestamps show it (milliseconds, Z)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---- catalogue, auth, dialects ------------------------------------------------------------------


def test_apps_list_and_detail_shapes(emulator: Emulator) -> None:
    """Both dialects list the built-in apps and show parameters with ids, keys, options and defaults."""
    with api(emulator) as c:
        for prefix in ("/v1", "/api"):
            ids = [a["appId"] for a in c.get(f"{prefix}/apps").json()["data"]]
            assert ids == ["app_7Hk2", "app_9Qx1", "app_3Vr8", "app_5Tx4"]
        d = c.get("/v1/apps/app_7Hk2").json()["data"]
        assert d["name"] == "Product Hero"
        p = {x["name"]: x for x in d["parameters"]}
        assert "default" not in p["Prompt"]
        assert p["Prompt"]["key"] == "prompt"
        assert p["Aspect Ratio"]["options"] == ["1:1", "4:3", "3:4", "16:9", "9:16"]
        assert p["Aspect Ratio"]["default"] == "1:1"
        assert p["Reference Image"] == {**p["Reference Image"], "type": "url", "accept": ["image"], "default": ""}
        assert len(p["Prompt"]["id"]) == 36
        assert p["Prompt"]["id"] == c.get("/api/apps/app_7Hk2").json()["data"]["parameters"][0]["id"]
        assert d["outputs"] == [{"index": 0, "label": "Hero Image", "type": "image"}]
        banner_app = c.get("/v1/apps/app_9Qx1").json()["data"]["parameters"][0]
        assert banner_app["required"] is False
        assert "default" not in banner_app


def test_apps_search_limit_and_unknown_app(emulator: Emulator) -> None:
    """Search filters by name, limit truncates, and an unknown app is a 404 NOT_FOUND envelope."""
    with api(emulator) as c:
        assert [a["appId"] for a in c.get("/v1/apps", params={"search": "banner"}).json()["data"]] == ["app_9Qx1"]
        assert len(c.get("/v1/apps", params={"limit": 2}).json()["data"]) == 2
        r = c.get("/v1/apps/app_nope")
        assert r.status_code == 404
        body = r.json()
        assert body["code"] == "NOT_FOUND"
        assert body["retryable"] is False
        assert body["requestId"]


def test_auth_missing_wrong_and_x_api_key(emulator: Emulator) -> None:
    """No key is AUTH_MISSING_KEY, a wrong key AUTH_INVALID_KEY (without echoing it), x-api-key works."""
    with httpx.Client(base_url=emulator.base_url) as c:
        r = c.get("/v1/apps")
        assert (r.status_code, r.json()["code"]) == (401, "AUTH_MISSING_KEY")
        r = c.get("/v1/apps", headers={"Authorization": "Bearer lma_wrong_secret"})
        assert (r.status_code, r.json()["code"]) == (401, "AUTH_INVALID_KEY")
        assert "lma_wrong_secret" not in r.text
        assert c.get("/v1/apps", headers={"x-api-key": emulator.key}).status_code == 200
        assert c.get("/files/run_x/0.png").status_code == 404  # files need no key


def test_key_not_in_reprs(make_emulator: MakeEmu) -> None:
    """The API key never shows in the config's or the emulator's repr."""
    emu = make_emulator(key="lma_topsecret_123")
    assert "lma_topsecret_123" not in repr(emu.config)
    assert "lma_topsecret_123" not in repr(emu)
    assert banner(emu.base_url, emu.key) == f"Lamina emulator on {emu.base_url} (key lma_topsecret_123)"


def test_executions_dialect(emulator: Emulator) -> None:
    """The executions dialect answers executionId and has no wait, list, cancel or estimate."""
    with api(emulator) as c:
        r = c.post("/api/apps/app_5Tx4/executions", json={"inputs": {"Product Name": "Mug"}})
        assert r.status_code == 202
        data = r.json()["data"]
        assert "runId" not in data
        assert data["status"] == "queued"
        eid = data["executionId"]
        until(lambda: c.get(f"/api/executions/{eid}").json()["data"]["status"] == "completed")
        done = c.get(f"/api/executions/{eid}").json()["data"]
        assert done["executionId"] == eid
        assert "Mug" in done["outputs"][0]["value"]
        for method, path in [
            ("GET", f"/api/executions/{eid}/wait"),
            ("GET", "/api/executions"),
            ("POST", f"/api/executions/{eid}/cancel"),
            ("POST", "/api/apps/app_5Tx4/estimate"),
        ]:
            assert c.request(method, path).status_code == 404, path


def test_unknown_route_is_404(emulator: Emulator) -> None:
    """Unknown API paths and wrong methods get a 404 error envelope."""
    with api(emulator) as c:
        assert c.get("/v1/nothing").json()["code"] == "NOT_FOUND"
        assert c.delete("/v1/apps").status_code == 404
        assert c.get("/").status_code == 404


# ---- start validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"inputs": {"Promt": "x"}}, {"Promt", "Prompt"}),
        ({"inputs": {"Prompt": "x", "Aspect Ratio": "2:1"}}, {"Aspect Ratio"}),
        ({"inputs": {"Prompt": "x", "Reference Image": "file:///etc/passwd"}}, {"Reference Image"}),
        ({"inputs": {}}, {"Prompt"}),
        ({"inputs": {"Prompt": 3}}, {"Prompt"}),
        ({"inputs": {"Prompt": "x"}, "outputs": ["Nope"]}, {"outputs"}),
        ({"prompt": "x"}, {"prompt", "inputs"}),
        ([1, 2], {"body"}),
    ],
)
def test_start_validation_errors(emulator: Emulator, body: Any, fields: set[str]) -> None:
    """Bad start bodies are 400 VALIDATION_ERROR with a details entry per bad field, and start nothing."""
    with api(emulator) as c:
        r = c.post(f"/v1/apps/{HERO}/runs", json=body)
        assert r.status_code == 400
        err = r.json()
        assert err["code"] == "VALIDATION_ERROR"
        assert err["retryable"] is False
        assert {d["field"] for d in err["details"]} == fields
    assert emulator.stats.starts == 0


def test_start_invalid_json_and_webhook_url(emulator: Emulator) -> None:
    """Non-JSON bodies are VALIDATION_ERROR and a non-http webhook is WEBHOOK_INVALID_URL."""
    with api(emulator) as c:
        r = c.post(f"/v1/apps/{HERO}/runs", content=b"{nope")
        assert (r.status_code, r.json()["code"]) == (400, "VALIDATION_ERROR")
        r = c.post(f"/v1/apps/{HERO}/runs", params={"webhook": "ftp://x"}, json={"inputs": {"Prompt": "x"}})
        assert (r.status_code, r.json()["code"]) == (400, "WEBHOOK_INVALID_URL")


def test_output_selection_and_required_false_without_default(emulator: Emulator) -> None:
    """An outputs list limits the outputs; a param marked required=false but without default must be sent."""
    with api(emulator) as c:
        data = start(c, "app_3Vr8", {"Prompt": "mug"}, params=None)
        assert [o["label"] for o in data["outputs"]] == ["Front", "Back"]
        r = c.post("/v1/apps/app_3Vr8/runs", json={"inputs": {"Prompt": "mug"}, "outputs": ["Back"]})
        assert [o["label"] for o in r.json()["data"]["outputs"]] == ["Back"]
        r = c.post("/v1/apps/app_9Qx1/runs", json={"inputs": {"Headline": "Hi"}})
        assert r.status_code == 400
        assert r.json()["details"][0]["field"] == "Product Image"


def test_inputs_as_the_official_cli_sends_them(emulator: Emulator) -> None:
    """Requests shaped like Lamina's own CLI (`lamina run app_7Hk2 --input prompt="A mug" --input
    aspect_ratio=16:9 --wait`): x-api-key, the app read for its keys, inputs keyed by key, the run polled."""
    headers = {"x-api-key": emulator.key, "content-type": "application/json"}
    with httpx.Client(base_url=emulator.base_url, headers=headers, timeout=10) as c:
        params = c.get(f"/v1/apps/{HERO}").json()["data"]["parameters"]
        assert [p["key"] for p in params] == ["prompt", "aspect_ratio", "reference_image"]
        body = json.dumps({"inputs": {"prompt": "A mug", "aspect_ratio": "16:9"}})
        r = c.post(f"/v1/apps/{HERO}/runs", content=body)
        assert r.status_code == 202, r.text
        run_id = r.json()["data"]["runId"]
        until(lambda: c.get(f"/v1/runs/{run_id}").json()["data"]["status"] == "completed")
        url = c.get(f"/v1/runs/{run_id}").json()["data"]["outputs"][0]["value"]
        assert _pixels(c.get(url).content)[:2] == (384, 216)  # the aspect ratio was taken from its key
    assert list(emulator.stats.starts_by_inputs) == [(HERO, '{"Aspect Ratio":"16:9","Prompt":"A mug"}')]


def test_every_demo_parameter_has_a_key(emulator: Emulator) -> None:
    """Every parameter of every demo app carries a snake_case key."""
    with api(emulator) as c:
        for app in c.get("/v1/apps").json()["data"]:
            for p in c.get(f"/v1/apps/{app['appId']}").json()["data"]["parameters"]:
                assert p["key"] == p["name"].lower().replace(" ", "_"), p


def test_inputs_resolve_by_key_then_name_then_id(make_emulator: MakeEmu) -> None:
    """An input resolves by key first, then name, then id; two inputs setting one parameter are refused."""
    app = AppDef(
        "app_K",
        "K",
        None,
        (
            ParamDef("Size", "options", options=("S", "M"), default="S", key="size_label"),
            ParamDef("Label", "text", default="", key="Size"),
            ParamDef("Note", "text", default=""),
        ),
        (OutputDef(0, "Out", "text"),),
    )
    emu = make_emulator(apps=(app,))
    with api(emu) as c:
        note_id = c.get("/v1/apps/app_K").json()["data"]["parameters"][2]["id"]
        assert "key" not in c.get("/v1/apps/app_K").json()["data"]["parameters"][2]  # an older, keyless one
        start(c, "app_K", {"Size": "free text", "size_label": "M", note_id: "by id"})
        assert list(emu.stats.starts_by_inputs) == [("app_K", '{"Label":"free text","Note":"by id","Size":"M"}')]
        r = c.post("/v1/apps/app_K/runs", json={"inputs": {"size_label": "M", "Size": "x", "Label": "y"}})
        assert r.status_code == 400
        assert r.json()["details"] == [{"field": "Label", "message": "sets the same parameter (Label) as 'Size'"}]
        r = c.post("/v1/apps/app_K/runs", json={"inputs": {"sizes": "M"}})
        assert r.json()["details"][0]["message"] == "unknown parameter (known: size_label (Size), Size (Label), Note)"
    assert emu.stats.starts == 1


# ---- lifecycle, wait, list, cancel ---------------------------------------------------------------


def test_lifecycle_queued_running_completed(make_emulator: MakeEmu) -> None:
    """A run goes queued -> running -> completed with Z timestamps and output URLs only at the end."""
    emu = make_emulator(duration=0.3, queued=0.3)
    with api(emu) as c:
        data = start(c)
        rid = data["runId"]
        assert data["status"] == "queued"
        assert data["outputs"][0]["status"] == "pending"
        s = c.get(f"/v1/runs/{rid}").json()["data"]
        assert s["status"] == "queued"
        assert s["startedAt"] is None
        s = status_when(c, rid, "running")
        assert s["startedAt"].endswith("Z")
        assert s["completedAt"] is None
        assert s["outputs"][0]["value"] is None
        s = status_when(c, rid, "completed")
        assert s["errorMessage"] is None
        assert s["createdAt"] < s["startedAt"] < s["completedAt"]
        out = s["outputs"][0]
        assert out["label"] == "Hero Image"
        assert out["status"] == "completed"
        assert out["error"] is None
        assert out["value"] == f"{emu.base_url}/files/{rid}/0.png"
        assert out["id"].startswith("aiDesignerNode-")


def test_fail_marker_fails_run(emulator: Emulator) -> None:
    """An input containing [[fail]] makes the run end failed with an errorMessage and error outputs."""
    with api(emulator) as c:
        rid = start(c, inputs={"Prompt": "a mug [[fail]]"})["runId"]
        s = c.get(f"/v1/runs/{rid}/wait", params={"timeout": 5}).json()["data"]
        assert s["status"] == "failed"
        assert "[[fail]]" in s["errorMessage"]
        assert s["outputs"][0]["status"] == "error"
        assert s["outputs"][0]["value"] is None


def test_wait_completes_and_times_out(make_emulator: MakeEmu) -> None:
    """/wait returns the terminal body early, or the current body with timeout=true after N s."""
    emu = make_emulator(duration=0.2, queued=0.01)
    with api(emu) as c:
        rid = start(c)["runId"]
        t0 = time.monotonic()
        s = c.get(f"/v1/runs/{rid}/wait", params={"timeout": 10}).json()["data"]
        assert s["status"] == "completed"
        assert "timeout" not in s
        assert time.monotonic() - t0 < 2
    slow = make_emulator(duration=30.0)
    with api(slow) as c:
        rid = start(c)["runId"]
        t0 = time.monotonic()
        s = c.get(f"/v1/runs/{rid}/wait", params={"timeout": 1}).json()["data"]
        assert s["timeout"] is True
        assert s["status"] in ("queued", "running")
        assert 0.9 < time.monotonic() - t0 < 3
        for bad in ("0", "121", "x"):
            r = c.get(f"/v1/runs/{rid}/wait", params={"timeout": bad})
            assert (r.status_code, r.json()["code"]) == (400, "VALIDATION_ERROR")
        assert c.get("/v1/runs/run_missing/wait", params={"timeout": 1}).status_code == 404


def test_wait_returns_when_cancelled(make_emulator: MakeEmu) -> None:
    """A pending /wait returns promptly with `cancelled` when the run is cancelled meanwhile."""
    emu = make_emulator(duration=30.0)
    with api(emu) as c:
        rid = start(c)["runId"]
    result: dict[str, Any] = {}
    waiting = threading.Event()
    emu.on_result_request(lambda run_id: waiting.set())

    def waiter() -> None:
        with api(emu) as c2:
            result.update(c2.get(f"/v1/runs/{rid}/wait", params={"timeout": 20}).json()["data"])

    th = threading.Thread(target=waiter)
    t0 = time.monotonic()
    th.start()
    until(waiting.is_set)  # the /wait is held before the cancel arrives
    with api(emu) as c:
        c.post(f"/v1/runs/{rid}/cancel")
    th.join(5)
    assert result["status"] == "cancelled"
    assert time.monotonic() - t0 < 3


def test_list_runs_filters_and_pagination(make_emulator: MakeEmu) -> None:
    """GET /v1/runs is newest first, filters by appId/status/since, paginates, and omits inputs/outputs."""
    emu = make_emulator(duration=30.0)
    with api(emu) as c:
        first = [start(c, inputs={"Prompt": f"p{i}"})["runId"] for i in range(3)]
        later_runs = [start(c, "app_5Tx4", {"Product Name": f"n{i}"}) for i in range(2)]
        later = [r["runId"] for r in later_runs]
        c.post(f"/v1/runs/{first[0]}/cancel")
        page = c.get("/v1/runs").json()
        assert [r["runId"] for r in page["data"]] == [*reversed(later), *reversed(first)]
        assert page["pagination"] == {"total": 5, "limit": 20, "offset": 0}
        assert "inputs" not in page["data"][0]
        assert "outputs" not in page["data"][0]
        assert [r["runId"] for r in c.get("/v1/runs", params={"appId": HERO}).json()["data"]] == first[::-1]
        cancelled = c.get("/v1/runs", params={"status": "cancelled"}).json()
        assert [r["runId"] for r in cancelled["data"]] == [first[0]]
        since = later_runs[0]["createdAt"]  # first[-1] may share its millisecond: then it is listed too
        expected = [r["runId"] for r in page["data"] if r["createdAt"] >= since]
        assert expected[:2] == later[::-1]
        assert [r["runId"] for r in c.get("/v1/runs", params={"since": since}).json()["data"]] == expected
        p2 = c.get("/v1/runs", params={"limit": 2, "offset": 2}).json()
        assert [r["runId"] for r in p2["data"]] == [first[2], first[1]]
        assert p2["pagination"] == {"total": 5, "limit": 2, "offset": 2}
        for bad in ({"status": "done"}, {"limit": 0}, {"limit": 101}, {"offset": -1}, {"since": "yesterday"}):
            assert c.get("/v1/runs", params=bad).status_code == 400, bad


def test_cancel_idempotent_and_terminal_unchanged(make_emulator: MakeEmu) -> None:
    """Cancel moves a running run to cancelled once; repeats and terminal runs are returned unchanged."""
    emu = make_emulator(duration=30.0)
    with api(emu) as c:
        rid = start(c)["runId"]
        a = c.post(f"/v1/runs/{rid}/cancel")
        assert a.status_code == 200
        assert a.json()["data"]["status"] == "cancelled"
        until(lambda: now_iso() > a.json()["data"]["completedAt"])  # a second cancel would now stamp a later time
        b = c.post(f"/v1/runs/{rid}/cancel").json()["data"]
        assert b == a.json()["data"]
        assert c.post("/v1/runs/run_nope/cancel").status_code == 404
    fast = make_emulator(duration=0.05, queued=0.0)
    with api(fast) as c:
        rid = start(c)["runId"]
        done = c.get(f"/v1/runs/{rid}/wait", params={"timeout": 5}).json()["data"]
        assert c.post(f"/v1/runs/{rid}/cancel").json()["data"] == done


def test_stats_counts_duplicates_and_peak(make_emulator: MakeEmu) -> None:
    """stats counts starts by (app, canonical inputs), flags duplicates and tracks the peak of active runs."""
    emu = make_emulator(duration=0.3, queued=0.0)
    with api(emu) as c:
        start(c, inputs={"Prompt": "a", "Aspect Ratio": "1:1"})
        start(c, inputs={"Aspect Ratio": "1:1", "Prompt": "a"})
        start(c, inputs={"Prompt": "b"})
        assert emu.stats.peak_active == 3
        until(lambda: all((emu.run_status(i) or {})["status"] == "completed" for i in emu.run_ids()))
        start(c, inputs={"Prompt": "c"})
    assert emu.stats.starts == 4
    assert emu.stats.peak_active == 3
    assert emu.stats.duplicate_starts() == {(HERO, '{"Aspect Ratio":"1:1","Prompt":"a"}'): 2}
    assert len(emu.stats.api_requests()) == 4
    assert len(emu.run_ids()) == 4
    assert emu.run_status(emu.run_ids()[0])["status"] == "completed"  # type: ignore[index]
    assert emu.run_status("run_nope") is None


def test_same_seed_same_ids(make_emulator: MakeEmu) -> None:
    """Two emulators with the same seed hand out the same run ids."""
    ids = []
    for _ in range(2):
        emu = make_emulator(seed=42)
        with api(emu) as c:
            ids.append([start(c)["runId"] for _ in range(3)])
    assert ids[0] == ids[1]
    assert len(set(ids[0])) == 3


# ---- outputs ------------------------------------------------------------------------------------


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + n
    return chunks


def _pixels(data: bytes) -> tuple[int, int, set[bytes]]:
    chunks = _png_chunks(data)
    w, h = struct.unpack(">II", chunks[0][1][:8])
    raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
    assert len(raw) == h * (1 + 3 * w)
    px = {raw[i : i + 3] for row in range(h) for i in range(row * (1 + 3 * w) + 1, (row + 1) * (1 + 3 * w), 3)}
    return w, h, px


def test_png_outputs_valid_deterministic_and_coloured(emulator: Emulator) -> None:
    """Completed image outputs are valid PNGs (CRC, size), the same per inputs, and use the named colour."""
    with api(emulator) as c:
        a = start(c, "app_3Vr8", {"Prompt": "mug", "Colour": "red"})["runId"]
        b = start(c, "app_3Vr8", {"Prompt": "mug", "Colour": "red"})["runId"]
        wide = start(c, inputs={"Prompt": "mug", "Aspect Ratio": "16:9"})["runId"]
        assert c.get(f"/files/{a}/0.png").status_code == 404  # not completed yet
        for rid in (a, b, wide):
            c.get(f"/v1/runs/{rid}/wait", params={"timeout": 5})
        r = httpx.get(f"{emulator.base_url}/files/{a}/0.png")
        assert r.status_code == 200
        assert r.headers["content-type"] == "image/png"
        w, h, px = _pixels(r.content)
        assert (w, h) == (384, 384)
        assert bytes(COLOURS["red"]) in px
        assert httpx.get(f"{emulator.base_url}/files/{b}/0.png").content == r.content
        assert httpx.get(f"{emulator.base_url}/files/{a}/1.png").content != r.content
        assert _pixels(httpx.get(f"{emulator.base_url}/files/{wide}/0.png").content)[:2] == (384, 216)
        assert httpx.get(f"{emulator.base_url}/files/{a}/7.png").status_code == 404


def test_text_output_value(emulator: Emulator) -> None:
    """Text outputs carry generated text naming the product, not a URL."""
    with api(emulator) as c:
        rid = start(c, "app_5Tx4", {"Product Name": "Blue Mug", "Tone": "playful"})["runId"]
        s = c.get(f"/v1/runs/{rid}/wait", params={"timeout": 5}).json()["data"]
        assert s["outputs"][0]["type"] == "text"
        assert "Blue Mug" in s["outputs"][0]["value"]
        assert "fun" in s["outputs"][0]["value"]


# ---- estimate, credits, rate limit ---------------------------------------------------------------


def test_estimate_has_the_sdk_cost_estimate_shape(make_emulator: MakeEmu) -> None:
    """An estimate answers appId, name, expected/min/max credits, a breakdown per node adding up to expected,
    the balance and whether one run is affordable; with {"inputs"} the inputs are checked like a start's."""
    emu = make_emulator(credits=10)
    with api(emu) as c:
        r = c.post(f"/v1/apps/{HERO}/estimate", json={"inputs": {"prompt": "x"}})
        assert r.status_code == 200
        data = r.json()["data"]
        assert data["appId"] == HERO
        assert data["name"] == "Product Hero"
        assert data["estimatedCredits"] == {"expected": 4, "min": 3, "max": 6}
        assert data["currentBalance"] == 10
        assert data["affordable"] is True
        (node,) = data["breakdown"]
        assert node == {"nodeId": node["nodeId"], "nodeType": "aiDesignerNode", "credits": 4}
        assert node["nodeId"].startswith("aiDesignerNode-")
        bad = c.post(f"/v1/apps/{HERO}/estimate", json={"inputs": {}})
        assert (bad.status_code, bad.json()["details"][0]["field"]) == (400, "Prompt")
        two = c.post("/v1/apps/app_3Vr8/estimate", json={"inputs": {"prompt": "x"}}).json()["data"]
        assert [n["credits"] for n in two["breakdown"]] == [4, 4]
        assert two["affordable"] is True
        assert c.post("/v1/apps/app_nope/estimate").status_code == 404
    assert emu.stats.estimates_served == 2
    assert emu.stats.starts == 0
    assert emu.credits_remaining == 10


def test_estimate_without_a_body_as_the_official_sdk_sends_it(emulator: Emulator) -> None:
    """Lamina's SDK posts the estimate with no body: an app-wide estimate; unlimited balance is null."""
    with httpx.Client(base_url=emulator.base_url, headers={"x-api-key": emulator.key}) as c:
        data = c.post("/v1/apps/app_5Tx4/estimate").json()["data"]
    assert data["estimatedCredits"] == {"expected": 1, "min": 1, "max": 1}
    assert data["breakdown"][0]["nodeType"] == "textGenerationNode"
    assert data["currentBalance"] is None
    assert data["affordable"] is True


def test_demo_apps_have_distinct_costs(emulator: Emulator) -> None:
    """The demo catalogue's apps cost different amounts, so a plan's bill is worth reading."""
    with api(emulator) as c:
        costs = {
            a["appId"]: c.post(f"/v1/apps/{a['appId']}/estimate").json()["data"]["estimatedCredits"]["expected"]
            for a in c.get("/v1/apps").json()["data"]
        }
    assert costs == {"app_7Hk2": 4, "app_9Qx1": 6, "app_3Vr8": 8, "app_5Tx4": 1}


def test_balance_insufficient_credits_and_top_up(make_emulator: MakeEmu) -> None:
    """Starts take the app's credits from the balance; one it cannot cover is 402 INSUFFICIENT_CREDITS
    ("this run needs 8, 6 left") and creates nothing; the estimate says unaffordable; a top-up lets it start."""
    emu = make_emulator(credits=14)
    with api(emu) as c:
        start(c, "app_3Vr8", {"prompt": "mug"})
        r = c.post("/v1/apps/app_3Vr8/runs", json={"inputs": {"prompt": "cup"}})
        assert r.status_code == 402
        err = r.json()
        assert err["code"] == "INSUFFICIENT_CREDITS"
        assert err["retryable"] is False
        assert err["error"] == "Insufficient credits: this run needs 8, 6 left"
        est = c.post("/v1/apps/app_3Vr8/estimate", json={"inputs": {"prompt": "cup"}}).json()["data"]
        assert (est["currentBalance"], est["affordable"]) == (6, False)
        assert emu.stats.insufficient_credits == 1
        assert emu.stats.starts == 1
        assert emu.top_up(10) == 16
        start(c, "app_3Vr8", {"prompt": "cup"})
        assert c.post("/v1/apps/app_5Tx4/estimate").json()["data"]["currentBalance"] == 8
    assert emu.stats.starts == 2
    assert emu.stats.credits_spent == 16
    assert emu.credits_remaining == 8


def test_credit_controls(make_emulator: MakeEmu) -> None:
    """set_credits replaces the balance (None: unlimited); a top-up of an unlimited balance or of nothing is
    refused; the controls work before the emulator starts too."""
    emu = make_emulator(credits=3)
    with api(emu) as c:
        assert c.post(f"/v1/apps/{HERO}/runs", json={"inputs": {"Prompt": "x"}}).status_code == 402
        emu.set_credits(None)
        start(c)
        with pytest.raises(ValueError, match="unlimited"):
            emu.top_up(5)
        emu.set_credits(4)
        with pytest.raises(ValueError, match="positive"):
            emu.top_up(0)
        start(c)
        assert emu.credits_remaining == 0
    idle = Emulator(EmulatorConfig(credits=1))
    assert idle.top_up(2) == 3


def test_rate_limit_headers_and_429(make_emulator: MakeEmu) -> None:
    """The fixed window allows N API requests, then 429 with Retry-After; /files is not counted."""
    emu = make_emulator(rate_limit=3, rate_window=0.5)
    with api(emu) as c:
        remaining = []
        for _ in range(3):
            r = c.get("/v1/apps")
            assert r.status_code == 200
            assert r.headers["RateLimit-Limit"] == "3"
            remaining.append(r.headers["RateLimit-Remaining"])
            assert 0 < int(r.headers["RateLimit-Reset"]) <= 1
        assert remaining == ["2", "1", "0"]
        assert c.get("/files/run_x/0.png").status_code == 404
        r = c.get("/v1/apps")
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "1"
        body = r.json()
        assert body["code"] == "RATE_LIMITED"
        assert body["retryable"] is True
        assert body["retryAfter"] == 1
        assert emu.stats.sent_429 == 1
        until(lambda: c.get("/v1/apps").status_code == 200)  # the next window opens within 0.5 s


# ---- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "status", "code"),
    [
        (Faults(p429=1.0), 429, "RATE_LIMITED"),
        (Faults(p500=1.0), 500, "INTERNAL_ERROR"),
        (Faults(p503=1.0), 503, "RESOURCE_UNAVAILABLE"),
    ],
)
def test_error_faults(make_emulator: MakeEmu, faults: Faults, status: int, code: str) -> None:
    """Injected error faults answer retryable envelopes before handling: no run is created."""
    emu = make_emulator(faults=faults)
    with api(emu) as c:
        r = c.post(f"/v1/apps/{HERO}/runs", json={"inputs": {"Prompt": "x"}})
        assert r.status_code == status
        assert r.json()["code"] == code
        assert r.json()["retryable"] is True
        if status == 429:
            assert r.headers["Retry-After"] == "1"
        assert c.get("/files/run_x/0.png").status_code == 404  # files are never faulted
    assert emu.stats.starts == 0


def test_drop_fault_closes_without_reply(make_emulator: MakeEmu) -> None:
    """p_drop closes the connection without a reply and logs the request as dropped."""
    emu = make_emulator(faults=Faults(p_drop=1.0))
    with api(emu) as c, pytest.raises(httpx.RemoteProtocolError):
        c.get("/v1/apps")
    assert emu.stats.requests[-1].dropped
    assert emu.stats.requests[-1].status == 0


def test_slow_fault_delays_reply(make_emulator: MakeEmu) -> None:
    """p_slow delays the reply by slow_seconds."""
    emu = make_emulator(faults=Faults(p_slow=1.0, slow_seconds=0.3))
    with api(emu) as c:
        t0 = time.monotonic()
        assert c.get("/v1/apps").status_code == 200
        assert time.monotonic() - t0 >= 0.3


def test_lost_start_reply_still_creates_run(make_emulator: MakeEmu) -> None:
    """p_lost_start_reply creates the run, then drops the connection; the run is visible in the list."""
    emu = make_emulator(faults=Faults(p_lost_start_reply=1.0))
    with api(emu) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            c.post(f"/v1/apps/{HERO}/runs", json={"inputs": {"Prompt": "x"}})
        assert emu.stats.starts == 1
        assert c.get("/v1/runs", params={"appId": HERO}).json()["data"][0]["runId"] == emu.run_ids()[0]


def test_500_after_create_and_p_fail(make_emulator: MakeEmu) -> None:
    """p_start_500_after_create answers 500 though the run exists; p_fail makes runs end failed."""
    emu = make_emulator(faults=Faults(p_start_500_after_create=1.0, p_fail=1.0))
    with api(emu) as c:
        r = c.post(f"/v1/apps/{HERO}/runs", json={"inputs": {"Prompt": "x"}})
        assert r.status_code == 500
        assert emu.stats.starts == 1
        rid = emu.run_ids()[0]
        assert c.get(f"/v1/runs/{rid}/wait", params={"timeout": 5}).json()["data"]["status"] == "failed"


def test_faults_are_seeded(make_emulator: MakeEmu) -> None:
    """The same seed gives the same fault sequence; set_faults changes faults at runtime."""
    seqs = []
    for _ in range(2):
        emu = make_emulator(seed=7, faults=Faults(p500=0.5))
        with api(emu) as c:
            seqs.append([c.get("/v1/apps").status_code for _ in range(20)])
            emu.set_faults(Faults())
            assert c.get("/v1/apps").status_code == 200
    assert seqs[0] == seqs[1]
    assert {200, 500} == set(seqs[0])


def test_outage_503_and_drop(emulator: Emulator) -> None:
    """set_outage answers every API request 503 (or drops it), and lifts cleanly."""
    with api(emulator) as c:
        emulator.set_outage(True)
        r = c.get("/v1/apps")
        assert (r.status_code, r.json()["code"]) == (503, "RESOURCE_UNAVAILABLE")
        emulator.set_outage(True, drop=True)
        with pytest.raises(httpx.RemoteProtocolError):
            c.get("/v1/apps")
        emulator.set_outage(False)
        assert c.get("/v1/apps").status_code == 200


# ---- HTTP robustness ---------------------------------------------------------------------------


def _recv_replies(sock: socket.socket, n: int) -> list[bytes]:
    buf, replies = b"", list[bytes]()
    while len(replies) < n:
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        buf += chunk
        while b"\r\n\r\n" in buf:
            head, rest = buf.split(b"\r\n\r\n", 1)
            length = int(next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length"))[15:])
            if len(rest) < length:
                break
            replies.append(head)
            buf = rest[length:]
    return replies


def test_keep_alive_pipelining_and_bad_request(emulator: Emulator) -> None:
    """Two pipelined requests on one connection get two replies in order; garbage gets 400 and close."""
    host, port = emulator.base_url.removeprefix("http://").split(":")
    req = f"GET /v1/apps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {emulator.key}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(req + req.replace(b"/v1/apps", b"/v1/nope"))
        heads = _recv_replies(s, 2)
        assert heads[0].startswith(b"HTTP/1.1 200")
        assert heads[1].startswith(b"HTTP/1.1 404")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"NONSENSE\r\n\r\n")
        assert s.recv(1024).startswith(b"HTTP/1.1 400")


def test_chunked_request_body(emulator: Emulator) -> None:
    """A chunked start body is decoded like a Content-Length one."""

    def gen() -> Iterator[bytes]:
        yield b'{"inputs": '
        yield b'{"Prompt": "chunky"}}'

    with api(emulator) as c:
        r = c.post(f"/v1/apps/{HERO}/runs", content=gen())
        assert r.status_code == 202
    assert list(emulator.stats.starts_by_inputs) == [(HERO, '{"Prompt":"chunky"}')]


def test_serve_announces_and_answers() -> None:
    """serve() binds, announces the banner line, answers requests, and stops when cancelled."""

    async def main() -> None:
        lines: list[str] = []
        task = asyncio.create_task(serve(EmulatorConfig(key="lma_k", rate_limit=None), lines.append))
        await wait_for_async(lambda: lines, 5, "the banner line")
        assert lines[0].startswith("Lamina emulator on http://127.0.0.1:")
        assert lines[0].endswith("(key lma_k)")
        url = lines[0].split(" ")[3]
        async with httpx.AsyncClient(base_url=url, headers={"x-api-key": "lma_k"}) as c:
            assert (await c.get("/v1/apps")).status_code == 200
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


# ---- config file ---------------------------------------------------------------------------------

EXAMPLE = Path(__file__).parent.parent / "lamina_batch" / "emulator" / "example-config.yaml"


def test_example_config_loads() -> None:
    """The shipped example config loads with its extra app next to the built-ins, and overrides win."""
    cfg = EmulatorConfig.from_yaml(EXAMPLE, port=0, seed=3)
    assert [a.app_id for a in cfg.apps][-1] == "app_Sk3t"
    assert len(cfg.apps) == 5
    assert cfg.seed == 3
    assert cfg.credits == 500
    assert cfg.faults.p500 == 0.02
    assert cfg.duration == (2.0, 5.0)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("ratelimit: 3\n", "ratelimit"),
        ("duration: [3, 1]\n", "duration"),
        ("faults: {p500: 2}\n", "faults.p500"),
        ("faults: {p999: 0.1}\n", "faults.p999"),
        ("apps: [{appId: a, name: A, parameters: [{name: X, type: number}]}]\n", "apps[0].parameters[0].type"),
        ("apps: [{appId: a, name: A, parameters: [{name: X, type: options}]}]\n", "apps[0].parameters[0].options"),
        ("apps: [{appId: app_7Hk2, name: A}]\n", "apps[0].appId"),
        ("- 1\n", "top level"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_config_errors_name_file_and_field(tmp_path: Path, text: str, where: str) -> None:
    """A bad config file raises ValueError naming the file and the offending field."""
    p = tmp_path / "emu.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=r"emu\.yaml") as ei:
        EmulatorConfig.from_yaml(p)
    assert where in str(ei.value)


def test_config_parameter_keys_and_credit_ranges(tmp_path: Path) -> None:
    """Config parameters get a snake_case key unless given one (`key: null`: none); an app's credits may be
    a number or {expected, min, max}."""
    p = tmp_path / "emu.yaml"
    p.write_text(
        "include_builtin_apps: false\n"
        "apps:\n  - appId: app_X\n    name: X\n    credits: {expected: 3, min: 2, max: 5}\n"
        "    parameters: [{name: Photo URL}, {name: Old One, key: null, default: ''}, {name: B, key: bee}]\n"
    )
    (app,) = EmulatorConfig.from_yaml(p).apps
    assert [x.key for x in app.parameters] == ["photo_url", None, "bee"]
    assert (app.credits, app.credits_min_max) == (3, (2, 5))


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("credits: {expected: 3, min: 4}", "apps[0].credits"),
        ("credits: {min: 4}", "apps[0].credits"),
        ("credits: {expected: -1}", "apps[0].credits.expected"),
        ("parameters: [{name: A, key: k}, {name: B, key: k}]", "apps[0].parameters[1].key"),
        ("parameters: [{name: A, key: ''}]", "apps[0].parameters[0].key"),
    ],
)
def test_config_key_and_credit_errors(tmp_path: Path, text: str, where: str) -> None:
    """Bad credits or duplicate/empty parameter keys in a config name the field."""
    p = tmp_path / "emu.yaml"
    p.write_text(f"apps:\n  - appId: app_X\n    name: X\n    {text}\n")
    with pytest.raises(ValueError, match=r"emu\.yaml") as ei:
        EmulatorConfig.from_yaml(p)
    assert where in str(ei.value)


def test_custom_app_from_config_is_served(tmp_path: Path, make_emulator: MakeEmu) -> None:
    """Apps from a config file are listed, validated and run like built-ins."""
    p = tmp_path / "emu.yaml"
    p.write_text(
        "include_builtin_apps: false\n"
        "apps:\n  - appId: app_X\n    name: X\n    duration: 0.05\n"
        "    parameters: [{name: Size, type: options, options: [S, M]}]\n"
        "    outputs: [{label: Out, type: text}]\n"
    )
    cfg = EmulatorConfig.from_yaml(p)
    emu = make_emulator(apps=cfg.apps)
    with api(emu) as c:
        assert [a["appId"] for a in c.get("/v1/apps").json()["data"]] == ["app_X"]
        assert c.post("/v1/apps/app_X/runs", json={"inputs": {"Size": "L"}}).status_code == 400
        rid = start(c, "app_X", {"Size": "M"})["runId"]
        assert c.get(f"/v1/runs/{rid}/wait", params={"timeout": 5}).json()["data"]["status"] == "completed"


# ---- webhooks -----------------------------------------------------------------------------------


class Receiver:
    """A stdlib webhook receiver that records deliveries and answers scripted statuses."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(outer.statuses.pop(0) if outer.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    """Factory of webhook receivers, all closed at teardown."""
    made: list[Receiver] = []

    def make(statuses: list[int] | None = None) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _public_keys(c: httpx.Client, prefix: str = "/v1") -> list[tuple[str, Ed25519PublicKey]]:
    jwks = c.get(f"{prefix}/webhooks/signing-key").json()
    out = []
    for k in jwks["keys"]:
        assert (k["kty"], k["crv"], k["alg"]) == ("OKP", "Ed25519", "EdDSA")
        assert "=" not in k["x"]
        raw = base64.urlsafe_b64decode(k["x"] + "=" * (-len(k["x"]) % 4))
        out.append((k["kid"], Ed25519PublicKey.from_public_bytes(raw)))
    return out


def _verifies(key: Ed25519PublicKey, headers: dict[str, str], body: bytes) -> bool:
    msg = f"{headers['x-lamina-webhook-timestamp']}.".encode() + body
    try:
        key.verify(bytes.fromhex(headers["x-lamina-webhook-signature"]), msg)
    except InvalidSignature:
        return False
    return True


def test_webhook_signed_delivery(emulator: Emulator, receiver_factory: Callable[..., Receiver]) -> None:
    """A finished run POSTs its status body, Ed25519-signed over "<ts>." + body; tampering fails."""
    rec = receiver_factory()
    with api(emulator) as c:
        rid = start(c, params={"webhook": rec.url})["runId"]
        until(lambda: len(rec.deliveries) == 1)
        headers, body = rec.deliveries[0]
        assert headers["x-lamina-webhook-request-id"] == rid
        assert headers["x-lamina-webhook-user-id"]
        assert headers["content-type"] == "application/json"
        assert abs(int(headers["x-lamina-webhook-timestamp"]) - time.time()) < 5
        assert json.loads(body) == c.get(f"/v1/runs/{rid}").json()
        keys = _public_keys(c)
        assert [k for k, _ in keys] == ["lamina-webhook-v1"]
        assert c.get("/api/webhooks/signing-key").json() == c.get("/v1/webhooks/signing-key").json()
        key = keys[0][1]
        assert _verifies(key, headers, body)
        assert not _verifies(key, headers, body.replace(b"completed", b"c0mpleted"))
        bad_ts = {**headers, "x-lamina-webhook-timestamp": str(int(headers["x-lamina-webhook-timestamp"]) + 1)}
        assert not _verifies(key, bad_ts, body)
    until(lambda: emulator.stats.webhooks_settled == 1)
    assert emulator.stats.webhooks_delivered == 1
    assert emulator.stats.webhooks_failed == 0


def test_webhook_retries_failed_delivery(make_emulator: MakeEmu, receiver_factory: Callable[..., Receiver]) -> None:
    """A non-2xx delivery is retried after the configured delays, each attempt signed; at most 1+3 attempts."""
    emu = make_emulator(webhook_retry_delays=(0.05, 0.05, 0.05))
    ok_after_one = receiver_factory([500])
    never_ok = receiver_factory([500, 502, 503, 500, 500])
    with api(emu) as c:
        k = _public_keys(c)[0][1]
        r1 = start(c, params={"webhook": ok_after_one.url})["runId"]
        start(c, params={"webhook": never_ok.url})
        until(lambda: emu.stats.webhooks_settled == 2)  # both deliveries are over: delivered, or given up
    assert len(never_ok.deliveries) == 4
    assert len(ok_after_one.deliveries) == 2
    assert all(_verifies(k, h, b) for h, b in ok_after_one.deliveries + never_ok.deliveries)
    assert ok_after_one.deliveries[1][0]["x-lamina-webhook-request-id"] == r1
    assert emu.stats.webhooks_delivered == 1
    assert emu.stats.webhooks_failed == 5
    assert [a.attempt for a in emu.stats.webhook_log if a.run_id == r1] == [1, 2]


def test_webhook_connection_error_retried_and_drop(make_emulator: MakeEmu) -> None:
    """A refused delivery counts as failed and is retried; p_webhook_drop loses the delivery entirely."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    emu = make_emulator(webhook_retry_delays=(0.02,))
    with api(emu) as c:
        start(c, params={"webhook": dead})
        until(lambda: emu.stats.webhooks_failed == 2)
    dropper = make_emulator(p_webhook_drop=1.0)
    with api(dropper) as c:
        start(c, params={"webhook": dead})
        until(lambda: dropper.stats.webhooks_dropped == 1)
    assert dropper.stats.webhooks_sent == 0


def test_webhook_rotated_keys_and_cancel(make_emulator: MakeEmu, receiver_factory: Callable[..., Receiver]) -> None:
    """With rotated keys the set has two keys and only the newer verifies; cancel delivers at once."""
    emu = make_emulator(webhook_rotated=True, duration=30.0)
    rec = receiver_factory()
    with api(emu) as c:
        keys = _public_keys(c)
        assert [k for k, _ in keys] == ["lamina-webhook-v1", "lamina-webhook-v2"]
        rid = start(c, params={"webhook": rec.url})["runId"]
        c.post(f"/v1/runs/{rid}/cancel")
        until(lambda: len(rec.deliveries) == 1)
        h, body = rec.deliveries[0]
        assert json.loads(body)["data"]["status"] == "cancelled"
        assert [_verifies(k, h, body) for _, k in keys] == [False, True]
        assert emu.rotate_webhook_key() == "lamina-webhook-v3"
        assert len(_public_keys(c)) == 3


# ---- since at millisecond resolution, test-only controls -------------------------------------------------------


def test_list_runs_since_a_runs_own_created_at_lists_it(make_emulator: MakeEmu) -> None:
    """`since` equal to a run's createdAt lists it and every later run: none made in that millisecond is lost."""
    emu = make_emulator(duration=30.0)
    with api(emu) as c:
        made = [start(c, inputs={"Prompt": f"p{i}"}) for i in range(12)]
        for i, run in enumerate(made):
            listed = [r["runId"] for r in c.get("/v1/runs", params={"since": run["createdAt"]}).json()["data"]]
            assert listed[: len(made) - i] == [r["runId"] for r in reversed(made[i:])]
            older = {r["runId"] for r in made[:i] if r["createdAt"] < run["createdAt"]}
            assert not older & set(listed)


def test_epoch_ms_is_the_millisecond_created_at_shows() -> None:
    """epoch_ms (what `since` is compared with) is the millisecond createdAt shows, also where it rounded up."""
    rng = random.Random(5)
    edge = [math.nextafter(1764950400.234, 0), math.nextafter(1764950401.0, 0), 1764950401.0004999]
    for ts in edge + [1764950400 + rng.random() * 86400 for _ in range(2000)]:
        shown = datetime.fromisoformat(str(iso(ts)).replace("Z", "+00:00"))
        assert epoch_ms(ts) == (shown - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1), ts
    assert iso(edge[0]) == "2025-12-05T16:00:00.234Z"  # shown one millisecond above the float it was made at
    assert epoch_ms(edge[0]) == 1764950400234


def test_kill_on_start_kills_the_client_before_the_reply_of_its_nth_run(emulator: Emulator) -> None:
    """kill_on_start(pid, n) SIGKILLs pid once the n-th run exists, before its reply is written; one kill only."""
    code = (
        "import sys, httpx\n"
        "sys.stdin.readline()\n"
        "with httpx.Client(base_url=sys.argv[1], headers={'x-api-key': sys.argv[2]}) as c:\n"
        "    for i in range(3):\n"
        "        r = c.post('/v1/apps/app_7Hk2/runs', json={'inputs': {'Prompt': f'p{i}'}})\n"
        "        print(r.status_code, flush=True)\n"
    )
    client = subprocess.Popen(
        [sys.executable, "-c", code, emulator.base_url, emulator.key],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    emulator.kill_on_start(client.pid, 2)
    out, _ = client.communicate("go\n", timeout=60)
    assert client.returncode == -signal.SIGKILL
    assert out == "202\n"  # the first reply arrived; the second run was created but its reply never read
    assert emulator.stats.starts == 2
    assert emulator.stats.kills == 1
    with api(emulator) as c:
        for _ in range(3):
            start(c)  # disarmed after the kill: nothing else happens
    assert emulator.stats.kills == 1


def test_cancel_kill_disarms_and_arming_needs_a_positive_count(emulator: Emulator) -> None:
    """cancel_kill() disarms kill_on_start; a count below 1 is refused."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        emulator.kill_on_start(sleeper.pid, 1)
        emulator.cancel_kill()
        with api(emulator) as c:
            start(c)
        assert sleeper.poll() is None
        assert emulator.stats.kills == 0
        with pytest.raises(ValueError, match="at least 1"):
            emulator.kill_on_start(sleeper.pid, 0)
    finally:
        sleeper.kill()
        sleeper.communicate(timeout=30)


def test_start_hook_runs_before_the_run_exists(emulator: Emulator) -> None:
    """on_start(hook) sees each valid start's app and inputs before its run exists; on_start(None) removes it."""
    seen: list[tuple[str, dict[str, Any], int]] = []
    emulator.on_start(lambda app_id, inputs: seen.append((app_id, inputs, len(emulator.run_ids()))))
    with api(emulator) as c:
        start(c, inputs={"Prompt": "a"})
        start(c, "app_5Tx4", {"Product Name": "b"})
        assert c.post(f"/v1/apps/{HERO}/runs", json={"inputs": {"Nope": "x"}}).status_code == 400
        emulator.on_start(None)
        start(c, inputs={"Prompt": "c"})
    assert seen == [(HERO, {"Prompt": "a"}, 0), ("app_5Tx4", {"Product Name": "b"}, 1)]


def test_result_hook_runs_for_status_and_wait_requests_before_the_answer(emulator: Emulator) -> None:
    """on_result_request(hook) sees the run id of every status and /wait request, and of nothing else."""
    seen: list[str] = []
    emulator.on_result_request(seen.append)
    with api(emulator) as c:
        rid = start(c)["runId"]
        c.get(f"/v1/runs/{rid}")
        c.get(f"/v1/runs/{rid}/wait", params={"timeout": 5})
        c.get(f"/api/executions/{rid}")
        c.get("/v1/runs")
        c.post(f"/v1/runs/{rid}/cancel")
        emulator.on_result_request(None)
        c.get(f"/v1/runs/{rid}")
    assert seen == [rid, rid, rid]
