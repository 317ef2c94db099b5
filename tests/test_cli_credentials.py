"""The real `lamina-batch` process with the login Lamina's own CLI keeps, under a private HOME, against the emulator:
a stored key with no LAMINA_* variables, LAMINA_API_KEY first, OAuth tokens living a second through a batch of many
lifetimes (one process, and two shards sharing the login), a token the server expires early, kill -9 at a refresh,
a dead login before any start (exit 2) and mid-batch (exit 3, resumable); no token in any output, manifest or
report."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import assert_exactly_once, manifest_states, run_cli, wait_for, write_pipeline
from login_helpers import apikey_document, write_document

from lamina_batch.credentials import read_login_file
from lamina_batch.emulator import Emulator, OAuthConfig

MakeEmu = Callable[..., Emulator]
WEBHOOK = {"publicUrl": "https://hooks.example", "savedAt": "2026-12-01T09:00:00.000Z"}
REPORTS = ("csv", "jsonl", "html", "markdown", "junit")


def login_env(home: Path, **extra: str) -> dict[str, str]:
    """A CLI environment with no LAMINA_* variable (unless given) and `home` as HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMINA_", "COV_", "GITHUB_STEP"))}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", **extra)
    return env


def report_flags(folder: Path) -> list[str]:
    return [f"--report={fmt}={folder / ('report.' + fmt)}" for fmt in REPORTS]


def seed(emu: Emulator, home: Path, *, ttl: float) -> Path:
    """A fresh OAuth login for `emu` (tokens living `ttl` s) in home's config file, beside a webhook section."""
    pair = emu.seed_login(access_ttl=ttl)
    return write_document(home, pair.login_document(emu.base_url, webhook=WEBHOOK))


def batch(folder: Path, rows: int, *, concurrency: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_pipeline(folder, rows, banner=False, concurrency=concurrency, poll_interval="0.2s")


def assert_no_secret(emu: Emulator, texts: Iterable[str], folder: Path, *, extra: Iterable[str] = ()) -> None:
    """None of the emulator's issued tokens (nor `extra`) in any text, nor in any file under `folder` (manifest,
    its WAL, reports, downloads)."""
    secrets = [*emu.issued_tokens(), *extra]
    assert secrets
    blobs = [t.encode() for t in texts]
    blobs += [p.read_bytes() for p in folder.rglob("*") if p.is_file()]
    for secret in secrets:
        needle = secret.encode()
        assert not any(needle in blob for blob in blobs), "a token reached an output, manifest or report"


def refresh_accepted(emu: Emulator, path: Path) -> bool:
    """The file's refresh token is the latest one (an older one would be a reuse): the server accepts it."""
    creds = json.loads(path.read_text())["credentials"]
    grant = {"grant_type": "refresh_token", "refresh_token": creds["refreshToken"], "client_id": creds["clientId"]}
    return httpx.post(f"{emu.base_url}/cli/oauth/token", json=grant, timeout=10).status_code == 200


def accepted(emu: Emulator, token: str) -> bool:
    r = httpx.get(f"{emu.base_url}/v1/apps", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    return r.status_code == 200


def test_a_stored_key_runs_a_batch_with_no_lamina_variables(make_emulator: MakeEmu, tmp_path: Path) -> None:
    """An `apikey` login (`lamina login --api-key`) is all it takes: its key and baseUrl, no LAMINA_* set."""
    emu = make_emulator()
    home = tmp_path / "home"
    write_document(home, apikey_document(emu.key, emu.base_url))
    pipeline = batch(tmp_path / "work", 4)
    res = run_cli(pipeline, login_env(home))
    assert res.returncode == 0, res.stderr
    assert_exactly_once(emu, 4)


def test_lamina_api_key_beats_the_stored_login(make_emulator: MakeEmu, tmp_path: Path) -> None:
    """LAMINA_API_KEY (with LAMINA_BASE_URL) wins over a stored login that would be refused elsewhere."""
    emu = make_emulator()
    home = tmp_path / "home"
    write_document(home, apikey_document("lma_stored_elsewhere", "http://127.0.0.1:9"))
    pipeline = batch(tmp_path / "work", 3)
    res = run_cli(pipeline, login_env(home, LAMINA_API_KEY=emu.key, LAMINA_BASE_URL=emu.base_url))
    assert res.returncode == 0, res.stderr
    assert_exactly_once(emu, 3)


def test_a_login_living_a_second_lasts_a_batch_of_many_lifetimes(make_emulator: MakeEmu, tmp_path: Path) -> None:
    """Tokens living 1 s through a batch of several seconds: every run completes once, refreshed as it goes with
    0 reused refresh tokens; the file ends with the latest pair (0600, webhook kept), which is still accepted."""
    emu = make_emulator(oauth=OAuthConfig(access_ttl=1.0), duration=(0.6, 0.8))
    home = tmp_path / "home"
    path = seed(emu, home, ttl=1.0)
    work = tmp_path / "work"
    pipeline = batch(work, 12)
    began = time.monotonic()
    res = run_cli(pipeline, login_env(home), *report_flags(work))
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - began > 3.0  # several lifetimes of a token
    assert_exactly_once(emu, 12)
    oauth = emu.stats.oauth
    assert oauth.refreshes >= 3
    assert (oauth.reused_refresh_tokens, oauth.refused_refreshes, oauth.revoked_logins) == (0, 0, 0)
    document = json.loads(path.read_text())
    assert document["webhook"] == WEBHOOK
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert_no_secret(emu, [res.stdout, res.stderr], work)
    assert refresh_accepted(emu, path)


def test_a_token_the_server_expires_early_is_refreshed_and_the_batch_completes(
    make_emulator: MakeEmu, tmp_path: Path
) -> None:
    """Mid-batch the server expires every token (hours early): the next requests get 401, one refresh follows,
    each is sent once more, and the batch completes with no run started twice."""
    emu = make_emulator(oauth=OAuthConfig(access_ttl=3600), duration=(0.3, 0.5))
    home = tmp_path / "home"
    path = seed(emu, home, ttl=3600)
    expired = threading.Event()

    def expire_at_the_third_start(app_id: str, inputs: dict[str, Any]) -> None:
        if emu.stats.starts == 2 and not expired.is_set():
            expired.set()
            emu.expire_tokens()

    emu.on_start(expire_at_the_third_start)
    pipeline = batch(tmp_path / "work", 8)
    res = run_cli(pipeline, login_env(home))
    assert res.returncode == 0, res.stderr
    assert expired.is_set()
    assert_exactly_once(emu, 8)
    oauth = emu.stats.oauth
    assert oauth.expired_token_401s >= 1
    assert oauth.refreshes == 1
    assert oauth.reused_refresh_tokens == 0
    login = read_login_file(path).login
    assert login is not None
    assert accepted(emu, login.access)


def test_two_shards_sharing_one_login_never_present_a_refresh_token_twice(
    make_emulator: MakeEmu, tmp_path: Path
) -> None:
    """Two processes (shards 1/2 and 2/2) on one stored login whose tokens live 1 s: both complete, refreshes
    are shared through the file's lock, and the server never sees a refresh token twice."""
    emu = make_emulator(oauth=OAuthConfig(access_ttl=1.0), duration=(0.5, 0.7))
    home = tmp_path / "home"
    path = seed(emu, home, ttl=1.0)
    work = tmp_path / "work"
    pipeline = batch(work, 16)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lamina_batch", "run", str(pipeline), "--no-progress", "--shard", shard],
            env=login_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for shard in ("1/2", "2/2")
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        outputs += [out, err]
        assert proc.returncode == 0, err
    assert_exactly_once(emu, 16)
    oauth = emu.stats.oauth
    assert oauth.refreshes >= 2
    assert (oauth.reused_refresh_tokens, oauth.refused_refreshes) == (0, 0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["webhook"] == WEBHOOK
    assert_no_secret(emu, outputs, work)
    assert refresh_accepted(emu, path)


@pytest.mark.parametrize("point", ["refresh-received", "refresh-write", "refresh-written"])
def test_kill_9_at_a_refresh_mid_batch_leaves_a_readable_login(
    point: str, make_emulator: MakeEmu, tmp_path: Path
) -> None:
    """SIGKILL at the second refresh of a batch: the file stays valid (its other section, 0600). Once the new
    pair was whole on disk the rerun completes the batch with no run started twice; killed before that, the
    pair the server issued is lost and the rerun exits 2 before any start, saying to log in again (it never
    presents the used refresh token)."""
    emu = make_emulator(oauth=OAuthConfig(access_ttl=1.0), duration=(0.6, 0.8))
    home = tmp_path / "home"
    path = seed(emu, home, ttl=1.0)
    pipeline = batch(tmp_path / "work", 10)
    killed = run_cli(pipeline, login_env(home, LAMINA_BATCH_CRASHPOINT=f"{point}:2"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    loaded = read_login_file(path)
    assert loaded.login is not None
    assert loaded.document is not None
    assert loaded.document["webhook"] == WEBHOOK
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    started = emu.stats.starts

    again = run_cli(pipeline, login_env(home))
    if point == "refresh-received":
        assert again.returncode == 2, again.stderr
        assert "run `lamina login` again" in again.stderr
        assert len(again.stderr.strip().splitlines()) == 1
        assert emu.stats.starts == started
    else:
        assert again.returncode == 0, again.stderr
        assert_exactly_once(emu, 10)
    assert emu.stats.oauth.reused_refresh_tokens == 0
    assert emu.stats.duplicate_starts() == {}
    assert_no_secret(emu, [killed.stdout, killed.stderr, again.stdout, again.stderr], tmp_path / "work")


def test_a_dead_login_exits_2_before_any_start(make_emulator: MakeEmu, tmp_path: Path) -> None:
    """A login whose refresh is refused (the server revoked it): exit 2, one line saying to run `lamina login`
    again, no start, no traceback, no token."""
    emu = make_emulator(oauth=OAuthConfig(access_ttl=3600))
    home = tmp_path / "home"
    pair = emu.seed_login()
    url = f"{emu.base_url}/cli/oauth/token"
    grant = {"grant_type": "refresh_token", "refresh_token": pair.refresh_token, "client_id": pair.client_id}
    second = httpx.post(url, json=grant, timeout=10).json()
    httpx.post(url, json=grant, timeout=10)  # a used refresh token presented again: the whole login is revoked
    document = pair.login_document(emu.base_url)
    document["credentials"].update(apiKey=second["access_token"], refreshToken=second["refresh_token"])
    write_document(home, document)
    pipeline = batch(tmp_path / "work", 3)
    res = run_cli(pipeline, login_env(home))
    assert res.returncode == 2, res.stderr
    assert "run `lamina login` again (or set LAMINA_API_KEY)" in res.stderr
    assert "check LAMINA_API_KEY" not in res.stderr  # its own advice, not a rejected key's
    assert len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr
    assert emu.stats.starts == 0
    assert_no_secret(emu, [res.stdout, res.stderr], tmp_path / "work")


def test_a_login_refused_mid_batch_stops_with_exit_3_and_resumes(make_emulator: MakeEmu, tmp_path: Path) -> None:
    """The login dies mid-batch (tokens expired, the refresh refused): no new start, the runs in flight recorded,
    exit 3 saying to log in again; after `lamina login` the same command completes with no run started twice."""
    emu = make_emulator(oauth=OAuthConfig(access_ttl=3600), duration=(1.5, 2.0))
    home = tmp_path / "home"
    path = seed(emu, home, ttl=3600)
    pipeline = batch(tmp_path / "work", 10, concurrency=3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lamina_batch", "run", str(pipeline), "--no-progress"],
        env=login_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: emu.stats.starts >= 3, 30, "3 starts")
        # The login goes bad: its refresh token is one the server never issued, and its access tokens expire.
        document = json.loads(path.read_text())
        document["credentials"]["refreshToken"] = "lma_mcp_rt_not_issued"
        write_document(home, document)
        emu.expire_tokens()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, err
    assert "run `lamina login` again" in err
    assert "Traceback" not in err
    stopped_at = emu.stats.starts
    assert stopped_at < 10
    states = manifest_states(pipeline)
    assert states.get("running", 0) + states.get("completed", 0) == stopped_at  # every start recorded

    seed(emu, home, ttl=3600)  # `lamina login` again
    res = run_cli(pipeline, login_env(home))
    assert res.returncode == 0, res.stderr
    assert_exactly_once(emu, 10)
    assert_no_secret(emu, [out, err, res.stdout, res.stderr], tmp_path / "work")
