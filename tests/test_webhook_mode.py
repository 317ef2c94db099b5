"""Webhook mode end to end against the emulator's signed deliveries: cost per run, dropped deliveries recovered by
polling, forged deliveries refused, replays processed once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import wait_for

from lamina_batch.cli import main
from lamina_batch.client import LaminaClient
from lamina_batch.emulator import Emulator
from lamina_batch.emulator.signing import SigningKey
from lamina_batch.executor import ExecOptions, Executor, RunResult
from lamina_batch.manifest import Manifest
from lamina_batch.models import Rate, RunRecord, RunState
from lamina_batch.spec import load_pipeline

MakeEmulator = Callable[..., Emulator]

START_PATH = re.compile(r"^/v1/apps/[^/]+/runs$")
RESULT_PATH = re.compile(r"^/v1/runs/(?P<id>[^/]+)(/wait)?$")
FORGED_URL = "https://forged.invalid/evil.png"

HERO = """  - id: hero
    app: app_7Hk2
    inputs: {Prompt: "Studio photo of {{ row.name }}"}
"""
BANNER = """  - id: banner
    app: app_9Qx1
    needs: [hero]
    inputs: {Product Image: "{{ steps.hero.output }}", Headline: "{{ row.name }}"}
"""


def write_pipeline(path: Path, rows: int, steps: str = HERO, concurrency: int = 8) -> Path:
    lines = ["version: 1", "name: hooks", "matrix:", "  key: sku", "  rows:"]
    lines += [f'    - {{sku: "S{i}", name: "Mug {i}"}}' for i in range(1, rows + 1)]
    text = "\n".join(lines) + "\nsteps:\n" + steps + f"run:\n  concurrency: {concurrency}\n"
    path.write_text(text, encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def webhook_rows(manifest: Path) -> list[tuple[str, str | None]]:
    """(request_id, run_id) of every delivery the manifest recorded (read straight from its table)."""
    conn = sqlite3.connect(f"file:{manifest}?mode=ro", uri=True)
    try:
        return [(str(r[0]), r[1]) for r in conn.execute("SELECT request_id, run_id FROM webhooks")]
    finally:
        conn.close()


def manifest_runs(manifest: Path) -> list[RunRecord]:
    with Manifest.open(manifest, pipeline_name="hooks", writer=False) as m:
        return list(m.iter_runs())


def result_requests(emu: Emulator) -> list[str]:
    """Run ids of every status or /wait request the emulator answered."""
    ids = []
    for r in emu.stats.api_requests():
        m = RESULT_PATH.match(r.path)
        if m and r.method == "GET":
            ids.append(m.group("id"))
    return ids


def sign_post(port: int, body: dict[str, Any], request_id: str, key: Ed25519PrivateKey) -> httpx.Response:
    """POST a delivery to the receiver the way Lamina does, signed with `key`."""
    raw = json.dumps(body, separators=(",", ":")).encode()
    ts = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Lamina-Webhook-Signature": key.sign(f"{ts}.".encode() + raw).hex(),
        "X-Lamina-Webhook-Timestamp": str(ts),
        "X-Lamina-Webhook-Request-Id": request_id,
        "X-Lamina-Webhook-User-Id": "user_emulator",
    }
    return httpx.post(f"http://127.0.0.1:{port}/hook", content=raw, headers=headers, timeout=10)


@pytest.fixture
def api_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[Emulator], None]:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)

    def use(emu: Emulator) -> None:
        monkeypatch.setenv("LAMINA_BASE_URL", emu.base_url)
        monkeypatch.setenv("LAMINA_API_KEY", emu.key)

    return use


def test_cli_webhook_mode_costs_about_one_request_per_run(
    tmp_path: Path, make_emulator: MakeEmulator, api_env: Callable[[Emulator], None]
) -> None:
    """`run --webhook-url --listen`: every run completes at <= 1.1 start/status/wait requests each, beyond the
    preflight, and every recorded delivery is one the emulator really signed and sent."""
    emu = make_emulator()
    api_env(emu)
    pipeline = write_pipeline(tmp_path / "p.yaml", 6, HERO + BANNER)
    port = free_port()
    hook = f"http://127.0.0.1:{port}/hook"
    code = main(["run", str(pipeline), "--webhook-url", hook, "--listen", f"127.0.0.1:{port}", "--no-progress", "-q"])
    assert code == 0
    runs = manifest_runs(tmp_path / "p.lamina.sqlite")
    assert len(runs) == 12
    assert {r.state for r in runs} == {RunState.COMPLETED}

    api = emu.stats.api_requests()
    per_run = [r for r in api if START_PATH.match(r.path) or RESULT_PATH.match(r.path)]
    assert len(per_run) / len(runs) <= 1.1
    preflight = [r for r in api if r not in per_run]
    # one GET and one estimate (credits, issue 16) per app of the pipeline, plus the signing key: nothing else
    estimates = ["/v1/apps/app_7Hk2/estimate", "/v1/apps/app_9Qx1/estimate"]
    assert sorted(r.path for r in preflight) == sorted(
        ["/v1/apps/app_7Hk2", "/v1/apps/app_9Qx1", *estimates, "/v1/webhooks/signing-key"]
    )

    sent = {a.run_id for a in emu.stats.webhook_log if a.ok}
    recorded = webhook_rows(tmp_path / "p.lamina.sqlite")
    assert len(recorded) == 12
    assert {rid for rid, _ in recorded} == {r.remote_id for r in runs} == sent
    assert all(rid == run_id for rid, run_id in recorded)
    assert emu.stats.duplicate_starts() == {}


def test_forged_delivery_is_refused_and_a_replay_is_processed_once(
    tmp_path: Path, make_emulator: MakeEmulator, api_env: Callable[[Emulator], None]
) -> None:
    """During a webhook-mode run, a delivery signed with a wrong key gets 401 and completes nothing; a genuine
    delivery replayed twice is answered as a duplicate and recorded once."""
    emu = make_emulator(duration=(0.8, 1.2))
    api_env(emu)
    pipeline = write_pipeline(tmp_path / "p.yaml", 6, concurrency=2)
    port = free_port()
    genuine = SigningKey.derive(1, "lamina-webhook-v1").private  # what the seed-1 emulator signs with
    outcome: dict[str, Any] = {}

    def attack() -> None:
        try:
            wait_for(lambda: any(a.ok for a in emu.stats.webhook_log), 30, "a genuine delivery")
            delivered = [a.run_id for a in emu.stats.webhook_log if a.ok]
            live = [rid for rid in emu.run_ids() if (emu.run_status(rid) or {}).get("status") in ("queued", "running")]
            assert delivered, "no genuine delivery arrived"
            assert live, "no run left running to forge a result for"
            victim = live[0]
            forged = dict(emu.run_status(victim) or {})
            forged["status"] = "completed"
            forged["outputs"] = [
                {"id": "x", "label": "Hero Image", "type": "image", "value": FORGED_URL, "status": "completed"}
            ]
            outcome["victim"] = victim
            outcome["forged"] = sign_post(port, {"data": forged}, victim, Ed25519PrivateKey.generate())
            replayed = delivered[0]
            body = {"data": emu.run_status(replayed)}
            outcome["replayed"] = replayed
            outcome["replays"] = [sign_post(port, body, replayed, genuine) for _ in range(2)]
        except BaseException as e:  # surfaced by the main thread's asserts
            outcome["error"] = e

    helper = threading.Thread(target=attack)
    helper.start()
    try:
        code = main(
            [
                "run",
                str(pipeline),
                "--webhook-url",
                f"http://127.0.0.1:{port}/hook",
                "--listen",
                f"127.0.0.1:{port}",
                "--no-progress",
                "-q",
            ]
        )
    finally:
        helper.join(timeout=60)
    assert "error" not in outcome, outcome.get("error")
    assert code == 0

    assert outcome["forged"].status_code == 401
    for reply in outcome["replays"]:
        assert reply.status_code == 200
        assert reply.json().get("duplicate") is True

    runs = manifest_runs(tmp_path / "p.lamina.sqlite")
    assert {r.state for r in runs} == {RunState.COMPLETED}
    for r in runs:
        assert all(o.value != FORGED_URL for o in r.outputs)
    victim = next(r for r in runs if r.remote_id == outcome["victim"])
    assert victim.outputs[0].value == emu.run_status(outcome["victim"])["outputs"][0]["value"]  # type: ignore[index]

    recorded = [rid for rid, _ in webhook_rows(tmp_path / "p.lamina.sqlite")]
    assert len(recorded) == len(set(recorded)) == 6
    assert recorded.count(outcome["replayed"]) == 1


def test_dropped_deliveries_are_recovered_by_polling_after_the_grace_period(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    """With half the deliveries lost, every run still completes: exactly the runs with no delivery are polled,
    once their grace period is over."""
    emu = make_emulator(p_webhook_drop=0.5, seed=3)
    pipeline = load_pipeline(write_pipeline(tmp_path / "p.yaml", 10))
    port = free_port()
    options = ExecOptions(webhook_url=f"http://127.0.0.1:{port}/hook", listen=("127.0.0.1", port), webhook_grace=1.5)

    async def go() -> RunResult:
        async with LaminaClient(emu.base_url, emu.key, "runs", rate=Rate(1000, 1)) as client:
            with Manifest.open(tmp_path / "p.lamina.sqlite", pipeline_name="hooks", writer=True) as manifest:
                return await Executor(pipeline, manifest, client, options).run()

    started = time.monotonic()
    result = asyncio.run(go())
    elapsed = time.monotonic() - started
    assert result.counts == {RunState.COMPLETED: 10}
    runs = manifest_runs(tmp_path / "p.lamina.sqlite")
    all_ids = {r.remote_id for r in runs}
    delivered = {a.run_id for a in emu.stats.webhook_log if a.ok}
    dropped = all_ids - delivered
    assert 0 < len(dropped) < 10, "the seed should drop some deliveries but not all"
    assert emu.stats.webhooks_dropped == len(dropped)
    polled = set(result_requests(emu))
    assert polled == dropped
    assert elapsed >= 1.5  # the dropped ones were waited for (grace) before polling
    assert {rid for rid, _ in webhook_rows(tmp_path / "p.lamina.sqlite")} == delivered
    assert emu.stats.duplicate_starts() == {}


class SlowClients:
    """`count` connections to host:port that send a request head a byte every two seconds and never finish it;
    a connection the server closes is opened again `pause` seconds later, until stopped."""

    def __init__(self, host: str, port: int, count: int, pause: float = 1.0) -> None:
        self.addr = (host, port)
        self.count = count
        self.pause = pause
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _open(self) -> socket.socket | None:
        try:
            sock = socket.create_connection(self.addr, timeout=2)
            sock.sendall(b"POST /hook HTTP/1.1\r\nHost: x\r\n")
        except OSError:
            return None
        sock.setblocking(False)
        self.opened += 1
        return sock

    def _main(self) -> None:
        slots: list[tuple[socket.socket | None, float]] = [(None, 0.0)] * self.count
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                for i, (sock, when) in enumerate(slots):
                    if sock is None:
                        if now >= when:
                            opened = self._open()
                            slots[i] = (opened, now) if opened else (None, now + self.pause)
                        continue
                    try:
                        if sock.recv(4096) == b"":
                            raise ConnectionResetError
                    except BlockingIOError:
                        if now - when > 2.0:  # a byte every two seconds: never idle, never done
                            with contextlib.suppress(OSError):
                                sock.send(b"X")
                            slots[i] = (sock, now)
                        continue
                    except OSError:
                        pass
                    sock.close()
                    slots[i] = (None, now + self.pause)
                self._stop.wait(0.05)
        finally:
            for sock, _ in slots:
                if sock is not None:
                    sock.close()


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_NOFILE and /proc are Linux here")
def test_listener_under_many_slow_connections_and_few_descriptors(tmp_path: Path, make_emulator: MakeEmulator) -> None:
    """`run --listen` in a process limited to 256 descriptors while 600 slow connections hammer its receiver:
    the batch completes, nothing is started twice, and stderr holds a few rate-limited lines, no traceback."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        if hard != resource.RLIM_INFINITY and hard < 2048:
            pytest.skip("this test needs 2048 descriptors for its own slow clients")
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    # runs long enough (3 waves of 2-3 s) that the attack outlasts its own ramp-up even on a loaded machine
    emu = make_emulator(duration=(2.0, 3.0), webhook_retry_delays=(0.5, 1.0, 2.0, 4.0, 8.0))
    pipeline = write_pipeline(tmp_path / "p.yaml", 12, concurrency=4)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMINA_", "COV_", "GITHUB_STEP"))}
    env.update(LAMINA_BASE_URL=emu.base_url, LAMINA_API_KEY=emu.key, PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "lamina_batch", "run", str(pipeline), "--no-progress", "-q"]
    argv += ["--webhook-url", f"http://127.0.0.1:{port}/hook", "--listen", f"127.0.0.1:{port}"]

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=few_descriptors
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.05)
        with SlowClients("127.0.0.1", port, 600) as attack, contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=8)  # the attack lasts 8 s (or until the batch ends)
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert attack.opened > 600  # the receiver closed connections it could not take, and they came back
    lines = stderr.splitlines()
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) <= 12, lines
    assert proc.returncode == 0, stderr
    runs = manifest_runs(tmp_path / "p.lamina.sqlite")
    assert len(runs) == 12
    assert {r.state for r in runs} == {RunState.COMPLETED}
    assert emu.stats.duplicate_starts() == {}


def test_webhook_grace_defaults_to_twice_the_median_duration_and_at_least_60_s(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    """README: the webhook grace before polling is twice the app's median duration, at least 60 s."""
    # The injected sleep records each wait and returns at once.
    emu = make_emulator(p_webhook_drop=1.0)  # no delivery ever arrives: every run waits out its grace
    manifest_file = tmp_path / "p.lamina.sqlite"
    port = free_port()
    options = ExecOptions(webhook_url=f"http://127.0.0.1:{port}/hook", listen=("127.0.0.1", port))

    def batch(rows: int) -> tuple[RunResult, list[float]]:
        waits: list[float] = []

        async def sleep(seconds: float) -> None:
            waits.append(seconds)
            await asyncio.sleep(0)

        async def go() -> RunResult:
            pipeline = load_pipeline(write_pipeline(tmp_path / "p.yaml", rows))
            async with LaminaClient(emu.base_url, emu.key, "runs", rate=Rate(1000, 1)) as client:
                with Manifest.open(manifest_file, pipeline_name="hooks", writer=True) as manifest:
                    return await Executor(pipeline, manifest, client, options, sleep=sleep).run()

        return asyncio.run(go()), waits

    first, waits = batch(4)
    assert first.counts == {RunState.COMPLETED: 4}
    assert waits == [60.0] * 4  # runs of ~0.1 s: twice the median is far below the 60 s floor
    conn = sqlite3.connect(manifest_file)
    with conn:
        conn.execute("UPDATE runs SET remote_duration = 45.0")  # as if every earlier run had taken 45 s
    conn.close()
    second, waits = batch(8)
    assert second.counts == {RunState.COMPLETED: 8}
    assert waits == [90.0] * 4
    assert emu.stats.webhooks_dropped == 8
