"""Real processes sharing one HOME and one stored OAuth login against the emulator: several refreshing at the
same moment present the refresh token once; a kill -9 at each point of a refresh leaves a valid, readable file
(and what the next process does with it); a file that cannot be written is never rotated; no token in any output."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from login_helpers import login_path, write_document

from lamina_batch.credentials import read_login_file
from lamina_batch.emulator import Emulator, OAuthConfig, TokenPair

WORKER = Path(__file__).parent / "login_worker.py"
MakeEmu = Callable[..., Emulator]
WEBHOOK = {"publicUrl": "https://hooks.example", "savedAt": "2026-12-01T09:00:00.000Z"}


def tag(token: str) -> str:
    return hashlib.sha256(f"Bearer {token}".encode()).hexdigest()[:16]


class Workers:
    """Start login_worker.py processes with a private HOME; remember every output for the secrets check."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.outputs: list[str] = []
        self.seeded: tuple[str, ...] = ()  # the tokens the test wrote, looked for in every output too

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMINA_", "COV_"))}
        env.update(HOME=str(self.home), PYTHONUNBUFFERED="1", **extra)
        return env

    def start(self, mode: str, go: Path | None = None, **env: str) -> subprocess.Popen[str]:
        args = [sys.executable, str(WORKER), mode, *([str(go)] if go else [])]
        return subprocess.Popen(args, env=self.env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self, proc: subprocess.Popen[str], first: str = "") -> tuple[int, dict[str, Any] | None]:
        out, err = proc.communicate(timeout=60)
        self.outputs += [first, out, err]
        lines = [json.loads(line) for line in (first + out).splitlines() if line.strip()]
        result = [x for x in lines if "ready" not in x]
        return proc.returncode, (result[-1] if result else None)

    def run(self, mode: str, **env: str) -> tuple[int, dict[str, Any] | None]:
        return self.finish(self.start(mode, **env))


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    w = Workers(tmp_path / "home")
    yield w
    # no access or refresh token in any output of any worker (the file holds the tokens to look for)
    doc_path = login_path(w.home)
    if doc_path.exists():
        creds = json.loads(doc_path.read_text()).get("credentials", {})
        text = "\n".join(w.outputs)
        for secret in (creds.get("apiKey"), creds.get("refreshToken"), *w.seeded):
            assert not secret or secret not in text


def seed_due(emu: Emulator, w: Workers, *, due: bool = True) -> tuple[Path, TokenPair]:
    """A login in w.home's file whose token is within the refresh margin (or fresh when not `due`)."""
    pair = emu.seed_login()
    w.seeded = (pair.access_token, pair.refresh_token)
    issued = time.time() - (pair.expires_in - 5 if due else 0)
    return write_document(w.home, pair.login_document(emu.base_url, issued_at=issued, webhook=WEBHOOK)), pair


@pytest.mark.parametrize("mode", ["due", "401"])
def test_processes_refreshing_at_once_present_the_refresh_token_once(
    mode: str, make_emulator: MakeEmu, workers: Workers, tmp_path: Path
) -> None:
    """Four processes needing a refresh at the same moment (token due, or a 401 each): one refresh in all, the
    others adopt the pair it wrote; every one's request succeeds with that pair; 0 reused refresh tokens."""
    emu = make_emulator(oauth=OAuthConfig(access_ttl=600))
    path, pair = seed_due(emu, workers, due=mode == "due")
    go = tmp_path / "go"
    procs = [workers.start(mode, go) for _ in range(4)]
    firsts = []
    for proc in procs:
        assert proc.stdout is not None
        firsts.append(proc.stdout.readline())
        assert json.loads(firsts[-1]) == {"ready": True}
    go.touch()
    results = [workers.finish(proc, first) for proc, first in zip(procs, firsts, strict=True)]
    assert [code for code, _ in results] == [0, 0, 0, 0], results
    outcomes = [r for _, r in results if r is not None]
    assert {r["status"] for r in outcomes} == {200}
    creds = json.loads(path.read_text())["credentials"]
    assert {r["tag"] for r in outcomes} == {tag(creds["apiKey"])}
    assert creds["refreshToken"] != pair.refresh_token
    assert sorted((r["refreshes"], r["adopted"]) for r in outcomes) == [(0, 1), (0, 1), (0, 1), (1, 0)]
    stats = emu.stats.oauth
    assert (stats.refreshes, stats.reused_refresh_tokens, stats.refused_refreshes) == (1, 0, 0)


@pytest.mark.parametrize("point", ["refresh-received", "refresh-write", "refresh-written"])
def test_kill_9_during_a_refresh_leaves_a_valid_file(point: str, make_emulator: MakeEmu, workers: Workers) -> None:
    """SIGKILL at each point of a refresh: the file stays valid JSON with its other sections and mode 0600. After
    the write was complete (fsynced temp, or renamed) the next process uses the new pair (rolling the temp file
    forward); killed before, the pair the server issued is lost and the next process says to log in again
    rather than present the used refresh token. The emulator never sees a refresh token twice."""
    emu = make_emulator(oauth=OAuthConfig(access_ttl=600))
    path, pair = seed_due(emu, workers)
    code, _ = workers.run("due", LAMINA_BATCH_CRASHPOINT=point)
    assert code == -signal.SIGKILL
    assert emu.stats.oauth.refreshes == 1
    loaded = read_login_file(path)
    assert loaded.login is not None
    assert loaded.document is not None
    assert loaded.document["webhook"] == WEBHOOK
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    renamed = point == "refresh-written"
    assert (loaded.login.access == pair.access_token) is not renamed
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == (0 if renamed else 1)  # the temp file (preallocated, or whole and fsynced)

    code, result = workers.run("due")
    assert result is not None
    if point == "refresh-received":
        assert code == 2
        assert result["type"] == "LoginRefreshError"
        assert "never presented twice" in result["error"]
        assert "run `lamina login` again (or set LAMINA_API_KEY)" in result["error"]
    else:
        assert code == 0
        assert (result["status"], result["refreshes"], result["adopted"]) == (200, 0, int(point == "refresh-write"))
        creds = json.loads(path.read_text())["credentials"]
        assert result["tag"] == tag(creds["apiKey"])
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert (emu.stats.oauth.refreshes, emu.stats.oauth.reused_refresh_tokens) == (1, 0)


def test_a_file_that_cannot_be_written_is_never_rotated(make_emulator: MakeEmu, workers: Workers) -> None:
    """With file writes limited to 0 bytes (so even root cannot write), the refresh is refused before it is sent:
    one line naming the file, nothing presented to the server, the file unchanged."""
    emu = make_emulator(oauth=OAuthConfig(access_ttl=600))
    path, _ = seed_due(emu, workers)
    before = path.read_bytes()
    code, result = workers.run("nowrite")
    assert code == 2
    assert result is not None
    assert result["type"] == "LoginRefreshError"
    assert result["error"].startswith(f"{path}: cannot be written (")
    assert "so the login was not refreshed: make it writable, or set LAMINA_API_KEY" in result["error"]
    assert not [e for e in emu.stats.requests if e.path == "/cli/oauth/token"]
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
