"""The review server over loopback HTTP: its page, data and files, the guards on its write endpoints, verdicts
beside a real batch running against the emulator, and a kill -9 of a real server process losing nothing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from review_helpers import Run, planned, write_png, write_runs

from lamina_batch.emulator import Emulator
from lamina_batch.errors import ConfigError, ManifestError
from lamina_batch.manifest import Manifest
from lamina_batch.models import DownloadRecord, RunOutput, RunState
from lamina_batch.reports.common import PastAttempt
from lamina_batch.review import ReviewSource, ReviewThread, check_bind_host, serve_review
from lamina_batch.verdicts import VerdictStore

NAME = "catalogue"
RED, BLUE = (220, 30, 30), (30, 60, 220)


def source(manifest: Path, out_dir: Path, **kw: Any) -> ReviewSource:
    return ReviewSource(manifest, NAME, ("hero", "banner"), out_dir, template_columns=("name",), **kw)


@pytest.fixture
def batch(tmp_path: Path) -> tuple[Path, Path]:
    """A manifest: row 1 hero+banner completed with PNGs, row 2 hero failed, row 3 hero completed remotely."""
    manifest = tmp_path / "p.lamina.sqlite"
    runs = [
        Run("hero", 1, {"sku": "A1", "name": "Mug"}, key="A1", colour=RED),
        Run("banner", 1, {"sku": "A1", "name": "Mug"}, key="A1", colour=BLUE),
        Run("hero", 2, {"sku": "B2", "name": "Tee"}, key="B2", state=RunState.FAILED, error="content policy"),
        Run("hero", 3, {"sku": "C3", "name": "Cap"}, key="C3", remote_image="https://cdn.example/c3.png"),
    ]
    write_runs(manifest, tmp_path, runs)
    return manifest, tmp_path


@pytest.fixture
def server(batch: tuple[Path, Path]) -> Iterator[ReviewThread]:
    with ReviewThread(source(*batch)) as srv:
        yield srv


def client(srv: ReviewThread) -> httpx.Client:
    return httpx.Client(base_url=srv.url.rstrip("/"), timeout=10)


def write_headers(srv: ReviewThread, **extra: str) -> dict[str, str]:
    origin = srv.url.rstrip("/")
    return {"X-Review-Token": srv.token, "Origin": origin, "Content-Type": "application/json", **extra}


def test_page_carries_its_token_and_a_strict_policy(server: ReviewThread) -> None:
    """GET / is the page, with this session's token, a nonce-only CSP, and no framing."""
    with client(server) as c:
        r = c.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert f'<meta name="review-token" content="{server.token}">' in r.text
    csp = r.headers["content-security-policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce is not None
    assert f'<script nonce="{nonce.group(1)}">' in r.text
    assert "frame-ancestors 'none'" in csp
    assert "connect-src 'self'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert "http://" not in r.text  # nothing loaded from elsewhere


def test_items_group_runs_by_row_with_images_and_values(server: ReviewThread) -> None:
    """/api/items: one item per row (title, values), its runs with file URLs or remote URLs and state."""
    with client(server) as c:
        data = c.get("/api/items").json()
    assert data["pipeline"] == NAME
    assert [i["title"] for i in data["items"]] == ["A1", "B2", "C3"]
    first = data["items"][0]
    assert first["shown"] == [["name", "Mug"]]
    assert [r["step"] for r in first["runs"]] == ["hero", "banner"]
    hero = first["runs"][0]
    assert hero["images"] == [{"src": "/files/hero-1/0?a=1", "label": "Hero Image"}]
    assert hero["reviewable"] is True
    assert hero["verdict"] is None
    failed = data["items"][1]["runs"][0]
    assert (failed["state"], failed["reviewable"], failed["error"]) == ("failed", False, "content policy")
    assert data["items"][2]["runs"][0]["images"] == [{"src": "https://cdn.example/c3.png", "label": "Hero Image"}]
    assert isinstance(data["stamp"], int)


def test_files_are_served_safely(server: ReviewThread, batch: tuple[Path, Path]) -> None:
    """A run's image comes back as itself, sandboxed; a record pointing outside the output folder, or through
    a symlink out of it, is refused; unknown runs and indexes are 404."""
    manifest, out_dir = batch
    outside = out_dir.parent / "outside.png"
    write_png(outside, RED)
    (out_dir / "out" / "link.png").symlink_to(outside)
    with Manifest.open(manifest, pipeline_name=NAME, writer=True) as m:
        m.add_download("hero-3", DownloadRecord(0, "Hero Image", "x", "../outside.png", 1, "0" * 64))
        m.add_download("hero-2", DownloadRecord(0, "Hero Image", "x", "out/link.png", 1, "0" * 64))
    with client(server) as c:
        r = c.get("/files/hero-1/0?a=1")
        assert r.status_code == 200
        assert r.headers["content-type"] == "image/png"
        assert r.content == (out_dir / "out" / "A1" / "hero-1.png").read_bytes()
        assert r.headers["content-security-policy"].startswith("sandbox")
        assert r.headers["x-content-type-options"] == "nosniff"
        assert c.get("/files/hero-3/0").status_code == 404
        assert c.get("/files/hero-2/0").status_code == 404
        assert c.get("/files/nope/0").status_code == 404
        assert c.get("/files/hero-1/7").status_code == 404
        assert c.get("/files/hero-1/a9/0").status_code == 404
        assert c.get("/etc/passwd").status_code == 404
        assert c.delete("/").status_code == 405


def test_earlier_attempts_are_listed_newest_first_and_served(batch: tuple[Path, Path]) -> None:
    """With a history source, a run's earlier attempts come with their images (served from where they were
    kept) and their verdicts, newest first; the current attempt is unreviewed again."""
    manifest, out_dir = batch
    with VerdictStore.open(manifest) as store:
        store.record("hero-1", 1, "rejected", "too red")
    hero1 = planned(Run("hero", 1, {"sku": "A1", "name": "Mug"}, key="A1"))
    with Manifest.open(manifest, pipeline_name=NAME, writer=True) as m:  # a redo that failed, then attempt 3
        m.begin_attempt(hero1, {"Prompt": "p"}, redo=True)
        m.finish("hero-1", RunState.FAILED, error="start reply lost")
        m.begin_attempt(hero1, {"Prompt": "p"})
        m.set_remote_id("hero-1", "run_redo")
        m.finish("hero-1", RunState.COMPLETED, outputs=(RunOutput("n1", "Hero Image", "image", "u", "completed"),))
    write_png(out_dir / "out" / "history" / "hero-1.attempt-1.png", BLUE)
    first = PastAttempt(
        1,
        RunState.COMPLETED,
        outputs=(RunOutput("n1", "Hero Image", "image", "https://cdn.example/old.png", "completed"),),
        downloads=(DownloadRecord(0, "Hero Image", "u", "out/history/hero-1.attempt-1.png", 1, "0" * 64),),
    )
    second = PastAttempt(2, RunState.FAILED, error="start reply lost")

    def history(identity: str) -> list[PastAttempt]:
        return [first, second] if identity == "hero-1" else []

    with ReviewThread(source(manifest, out_dir, history=history)) as srv, client(srv) as c:
        hero = c.get("/api/items").json()["items"][0]["runs"][0]
        assert (hero["attempt"], hero["verdict"]) == (3, None)
        assert [h["attempt"] for h in hero["history"]] == [2, 1]
        assert hero["history"][1]["verdict"]["note"] == "too red"
        assert hero["history"][1]["images"] == [{"src": "/files/hero-1/a1/0", "label": "Hero Image"}]
        assert hero["history"][0]["images"] == []
        r = c.get("/files/hero-1/a1/0")
        assert r.status_code == 200
        assert r.content == (out_dir / "out" / "history" / "hero-1.attempt-1.png").read_bytes()


def test_verdict_undo_and_the_stamp(server: ReviewThread, batch: tuple[Path, Path]) -> None:
    """A verdict from the page is saved at once (the store has it), shows in the items, moves the stamp;
    undo takes it back."""
    with client(server) as c:
        stamp = c.get("/api/stamp").json()["stamp"]
        body = {"identity": "hero-1", "attempt": 1, "verdict": "rejected", "note": "too red"}
        r = c.post("/api/verdict", json=body, headers=write_headers(server))
        assert r.status_code == 200, r.text
        assert r.json()["verdict"]["note"] == "too red"
        with VerdictStore.open(batch[0], writable=False) as store:
            assert store.latest()[("hero-1", 1)].verdict == "rejected"
        assert c.get("/api/stamp").json()["stamp"] != stamp
        assert c.get("/api/items").json()["items"][0]["runs"][0]["verdict"]["verdict"] == "rejected"
        r = c.post("/api/undo", json={"identity": "hero-1", "attempt": 1}, headers=write_headers(server))
        assert r.json() == {"undone": {"verdict": "rejected", "note": "too red", "at": r.json()["undone"]["at"]},
                            "verdict": None}  # fmt: skip
    assert server.server.stats.verdicts == 1


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"X-Review-Token": ""}, 403, "missing or wrong review token"),
        ({"X-Review-Token": "guess"}, 403, "missing or wrong review token"),
        ({"Origin": "http://evil.example"}, 403, "cross-site request from http://evil.example refused"),
        ({"Origin": "null"}, 403, "cross-site request from null refused"),
        ({"Sec-Fetch-Site": "cross-site"}, 403, "cross-site request refused"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "send JSON"),
        ({"Content-Type": "text/plain"}, 415, "send JSON"),
    ],
)
def test_cross_site_writes_are_refused(
    server: ReviewThread, batch: tuple[Path, Path], change: dict[str, str], status: int, message: str
) -> None:
    """Without the token, from another origin, or not as JSON, a write is refused and nothing is recorded."""
    headers = write_headers(server, **change)
    with client(server) as c:
        body = b'{"identity": "hero-1", "attempt": 1, "verdict": "rejected"}'
        r = c.post("/api/verdict", content=body, headers=headers)
    assert r.status_code == status
    assert r.json()["error"].startswith(message)
    with VerdictStore.open(batch[0], writable=False) as store:
        assert store.latest() == {}
    assert server.server.stats.refused == 1


def test_requests_naming_another_host_are_refused(server: ReviewThread) -> None:
    """DNS rebinding: a request whose Host is not this loopback server gets nothing, not even the page."""
    with client(server) as c:
        assert c.get("/", headers={"Host": f"evil.example:{server.server.port}"}).status_code == 421
        assert c.get("/", headers={"Host": f"localhost:{server.server.port}"}).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"identity": "hero-1", "attempt": 2, "verdict": "approved"}, 409, "attempt 2 is no longer"),
        ({"identity": "hero-2", "attempt": 1, "verdict": "approved"}, 409, "only completed runs are reviewed"),
        ({"identity": "nope", "attempt": 1, "verdict": "approved"}, 404, "no such run"),
        ({"identity": "hero-1", "attempt": 1, "verdict": "maybe"}, 400, "verdict must be"),
        ({"identity": "hero-1", "attempt": "1", "verdict": "approved"}, 400, "identity (text) and attempt"),
        ({"identity": "hero-1", "attempt": 1, "verdict": "approved", "note": "n" * 2001}, 400, "note must be"),
    ],
)
def test_bad_verdicts_are_refused(server: ReviewThread, body: dict[str, Any], status: int, message: str) -> None:
    """A stale attempt, a run that is not completed, an unknown run or a malformed body: nothing recorded."""
    with client(server) as c:
        r = c.post("/api/verdict", json=body, headers=write_headers(server))
        assert r.status_code == status
        assert message in r.json()["error"]
        assert c.post("/api/verdict", content=b"[1", headers=write_headers(server)).status_code == 400


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "example.com", "::"])
def test_non_loopback_hosts_need_allow_remote(host: str) -> None:
    """Binding anywhere but loopback is refused (exit 2) unless allow_remote says the network is trusted."""
    with pytest.raises(ConfigError, match="--allow-remote"):
        check_bind_host(host, False)
    check_bind_host(host, True)
    for ok in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        check_bind_host(ok, False)


def test_allow_remote_serves_any_host_name(batch: tuple[Path, Path]) -> None:
    """With allow_remote (bound to all interfaces), the Host header is the user's business."""
    with ReviewThread(source(*batch), host="0.0.0.0", allow_remote=True) as srv, client(srv) as c:
        assert c.get("/api/stamp", headers={"Host": "review.lan"}).status_code == 200


def test_serve_review_refuses_a_missing_manifest(tmp_path: Path) -> None:
    """No manifest yet: ManifestError before anything listens."""
    with pytest.raises(ManifestError, match="no manifest"):
        serve_review(source(tmp_path / "none.sqlite", tmp_path))


# --------------------------------------------------------------------------- real processes

SERVE = """
import sys
from pathlib import Path
from lamina_batch.review import ReviewSource, serve_review
src = ReviewSource(Path(sys.argv[1]), "catalogue", ("hero", "banner"), Path(sys.argv[2]))
serve_review(src, on_ready=lambda url: print(url, flush=True))
"""


def read_first_line(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"server exited: {proc.poll()}"
    assert time.monotonic() < deadline
    return line.strip()


def test_kill_9_of_the_server_loses_no_saved_verdict(batch: tuple[Path, Path]) -> None:
    """Each verdict the server acknowledged is in the manifest after a SIGKILL of that server process."""
    manifest, out_dir = batch
    env = {k: v for k, v in os.environ.items() if not k.startswith("COV_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(manifest), str(out_dir)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        url = read_first_line(proc, time.monotonic() + 30).rstrip("/")
        with httpx.Client(base_url=url, timeout=10) as c:
            token = re.search(r'name="review-token" content="([^"]+)"', c.get("/").text)
            assert token is not None
            headers = {"X-Review-Token": token.group(1), "Origin": url, "Content-Type": "application/json"}
            for identity, verdict in (("hero-1", "rejected"), ("banner-1", "approved"), ("hero-3", "rejected")):
                body = {"identity": identity, "attempt": 1, "verdict": verdict}
                assert c.post("/api/verdict", json=body, headers=headers).status_code == 200
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    with VerdictStore.open(manifest, writable=False) as store:
        latest = store.latest()
    assert {k: v.verdict for k, v in latest.items()} == {
        ("hero-1", 1): "rejected",
        ("banner-1", 1): "approved",
        ("hero-3", 1): "rejected",
    }


def write_pipeline(folder: Path, rows: int) -> Path:
    lines = ["version: 1", f"name: {NAME}", "matrix:", "  key: sku", "  rows:"]
    lines += [f"    - {{sku: S{i}, name: Item {i}, colour: red}}" for i in range(rows)]
    lines += [
        "steps:",
        "  - id: hero",
        "    app: app_7Hk2",
        "    inputs:",
        '      Prompt: "Photo of {{ row.name }} in {{ row.colour }}"',
        "  - id: banner",
        "    app: app_9Qx1",
        "    needs: [hero]",
        "    inputs:",
        '      Product Image: "{{ steps.hero.output }}"',
        '      Headline: "{{ row.name }}"',
        "download:",
        '  path: "out/{{ row.sku }}/{{ step.id }}{{ output.ext }}"',
        "run:",
        "  concurrency: 4",
        "  rate_limit: 100/s",
        "  poll_interval: 1s",
    ]
    path = folder / "pipeline.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def cli(pipeline: Path, emu: Emulator, *args: str) -> subprocess.Popen[bytes]:
    """`lamina-batch run` as a real process against `emu`; its output goes to run.log beside the pipeline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMINA_", "COV_", "GITHUB_STEP"))}
    env.update(LAMINA_BASE_URL=emu.base_url, LAMINA_API_KEY=emu.key)
    cmd = [sys.executable, "-m", "lamina_batch", "run", str(pipeline), "--no-progress", *args]
    with (pipeline.parent / "run.log").open("ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def log_of(pipeline: Path) -> str:
    return (pipeline.parent / "run.log").read_text(encoding="utf-8", errors="replace")


def test_reviewing_beside_a_running_batch(tmp_path: Path, make_emulator: Any) -> None:
    """While a real batch runs against the emulator, verdicts keep being saved, the batch finishes cleanly
    (exit 0, nothing started twice), and the server's data picks up every new completion."""
    emu = make_emulator(duration=(0.3, 0.6))
    pipeline = write_pipeline(tmp_path, 8)
    first = cli(pipeline, emu, "--max-starts", "2")
    assert first.wait(timeout=120) == 3, log_of(pipeline)
    src = ReviewSource(tmp_path / "pipeline.lamina.sqlite", NAME, ("hero", "banner"), tmp_path)
    with ReviewThread(src) as srv, client(srv) as c:
        items = c.get("/api/items").json()["items"]
        done = [r for i in items for r in i["runs"] if r["reviewable"]]
        assert len(done) == 2
        rest = cli(pipeline, emu)
        n, deadline = 0, time.monotonic() + 120
        while rest.poll() is None and time.monotonic() < deadline:
            run = done[n % 2]
            body = {"identity": run["identity"], "attempt": run["attempt"], "verdict": ("approved", "rejected")[n % 2]}
            assert c.post("/api/verdict", json=body, headers=write_headers(srv)).status_code == 200
            n += 1
        assert rest.wait(timeout=10) == 0, log_of(pipeline)
        assert n >= 2
        while time.monotonic() < deadline:
            runs = [r for i in c.get("/api/items").json()["items"] for r in i["runs"]]
            if sum(r["reviewable"] for r in runs) == 16:
                break
            time.sleep(0.05)  # poll interval
        assert sum(r["reviewable"] for r in runs) == 16
        assert all(r["images"][0]["src"].startswith("/files/") for r in runs)
        assert c.get(runs[-1]["images"][0]["src"]).status_code == 200
    assert emu.stats.starts == 16
    with VerdictStore.open(src.manifest, writable=False) as store:
        assert len(store.history(done[0]["identity"])) + len(store.history(done[1]["identity"])) == n
