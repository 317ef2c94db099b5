"""Credentials on the command line: `auth status`, the one order every command that talks to the API follows
(LAMINA_API_KEY, else the stored login), commands that send nothing needing none, the one-line errors when there
are none or the file is bad, and `emulator --login-file` (a login to try the OAuth flow with)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for, write_pipeline
from login_helpers import apikey_document, login_path, oauth_document, write_document

from lamina_batch.cli import main
from lamina_batch.credentials import describe_credentials
from lamina_batch.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LAMINA_* variable: only the stored login under the private HOME can give credentials."""
    for name in list(os.environ):
        if name.startswith("LAMINA_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture
def stored_key(emulator: Emulator, private_home: Path, no_env: None) -> Emulator:
    """An `apikey` login for the emulator in the private HOME, nothing in the environment."""
    write_document(private_home, apikey_document(emulator.key, emulator.base_url))
    return emulator


def pipeline_in(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_pipeline(folder, 2, banner=False, poll_interval="0.2s")


def test_auth_status_of_each_source_never_shows_a_secret(
    private_home: Path, no_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`auth status`: the stored OAuth login (its file, origin, kind and expiry), then LAMINA_API_KEY over it; exit 0
    while usable, and no key or token printed."""
    write_document(private_home, oauth_document(access="lma_mcp_at_SECRET", refresh="lma_mcp_rt_SECRET"))
    assert main(["auth", "status"]) == 0
    out = capsys.readouterr().out
    assert f"the stored login in {login_path(private_home)}" in out
    assert "origin: https://login.example.test (base URL from the stored login)" in out
    assert "kind: oauth (refreshable)" in out
    assert "no refresh needed" in out
    monkeypatch.setenv("LAMINA_API_KEY", "lma_env_SECRET")
    assert main(["auth", "status"]) == 0
    out += capsys.readouterr().out
    assert "credentials: the environment (LAMINA_API_KEY)" in out
    assert "origin: https://app.uselamina.ai (base URL from the default)" in out
    assert "SECRET" not in out


def test_auth_status_exits_2_when_nothing_is_usable(
    private_home: Path, no_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """No credentials: exit 2 naming both ways in; an expired login without refresh token, or a malformed file:
    exit 2 saying why."""
    assert main(["auth", "status"]) == 2
    out = capsys.readouterr().out
    assert "LAMINA_API_KEY" in out
    assert "`lamina login`" in out
    write_document(private_home, oauth_document(refresh=None, saved_at=time.time() - 7200))
    assert main(["auth", "status"]) == 2
    assert "expired, and the login holds no refresh token" in capsys.readouterr().out
    write_document(private_home, "{")
    assert main(["auth", "status"]) == 2
    assert f"{login_path(private_home)}:1: not valid JSON" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["apps", "list"],
        ["apps", "show", "app_7Hk2"],
        ["init", "app_7Hk2", "-o", "{dir}/init.yaml"],
        ["validate", "{pipeline}", "--check-apps"],
        ["run", "{pipeline}", "--no-progress"],
    ],
)
def test_every_command_that_talks_to_the_api_uses_the_stored_login(
    argv: list[str], stored_key: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With only a stored login, each command that sends requests works and sends them to its baseUrl."""
    pipeline = pipeline_in(tmp_path / "work")
    args = [a.format(dir=tmp_path, pipeline=pipeline) for a in argv]
    assert main(args) == 0, capsys.readouterr().err
    assert stored_key.stats.requests


def test_cancel_uses_the_stored_login(stored_key: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`cancel` after a run, with only the stored login: it reaches the manifest's server and exits 0."""
    pipeline = pipeline_in(tmp_path / "work")
    assert main(["run", str(pipeline), "--no-progress"]) == 0
    assert main(["cancel", str(pipeline)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["apps", "list"],
        ["apps", "show", "app_7Hk2"],
        ["init", "app_7Hk2", "-o", "{dir}/init.yaml"],
        ["validate", "{pipeline}", "--check-apps"],
        ["run", "{pipeline}", "--no-progress"],
        ["cancel", "{pipeline}"],
    ],
)
def test_no_credentials_is_exit_2_naming_both_ways_in(
    argv: list[str], no_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command that needs credentials and finds none: exit 2, one line naming LAMINA_API_KEY and
    `lamina login`, no traceback (and nothing written)."""
    pipeline = pipeline_in(tmp_path / "work")
    if "cancel" in argv:
        (tmp_path / "work" / "pipeline.lamina.sqlite").touch()
    args = [a.format(dir=tmp_path, pipeline=pipeline) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "LAMINA_API_KEY" in err[0]
    assert "`lamina login`" in err[0]
    assert not (tmp_path / "init.yaml").exists()


def test_a_malformed_login_file_is_one_line_unless_lamina_api_key_is_set(
    private_home: Path,
    no_env: None,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A stored login that is not JSON: exit 2 naming the file and the fault; with LAMINA_API_KEY set the file is
    never read and the command works."""
    write_document(private_home, '{"version": 1, "credentials": ')
    assert main(["apps", "list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"{login_path(private_home)}:1: not valid JSON")
    monkeypatch.setenv("LAMINA_API_KEY", emulator.key)
    monkeypatch.setenv("LAMINA_BASE_URL", emulator.base_url)
    assert main(["apps", "list"]) == 0


def test_commands_that_send_nothing_need_no_credentials(
    private_home: Path,
    no_env: None,
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`validate`, `plan`, `status` and `report` with no credentials at all and an unreadable login file."""
    pipeline = pipeline_in(tmp_path / "work")
    with monkeypatch.context() as env:
        env.setenv("LAMINA_API_KEY", emulator.key)
        env.setenv("LAMINA_BASE_URL", emulator.base_url)
        assert main(["run", str(pipeline), "--no-progress"]) == 0
    write_document(private_home, "not json")
    requests = len(emulator.stats.requests)
    assert main(["validate", str(pipeline)]) == 0
    assert main(["plan", str(pipeline)]) == 0
    assert main(["status", str(pipeline)]) == 0
    assert main(["report", str(pipeline), "-f", "csv", "-o", str(tmp_path / "r.csv")]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert len(emulator.stats.requests) == requests


@pytest.fixture
def emulator_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """`lamina-batch emulator --login-file HOME/.lamina/config.json --access-ttl 2` as a process of its own."""
    home = tmp_path / "try"
    path = login_path(home)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lamina_batch", "emulator", "--login-file", str(path), "--access-ttl", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield proc, path
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_emulator_login_file_is_a_login_to_try_the_oauth_flow(
    emulator_process: tuple[subprocess.Popen[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`emulator --login-file`: the banner first, then where the login went; the file is what `lamina login`
    writes (0600, folder 0700), and with that HOME lamina-batch uses it, refreshing it as its tokens expire."""
    proc, path = emulator_process
    assert proc.stdout is not None
    banner = proc.stdout.readline()
    assert banner.startswith("Lamina emulator on http://127.0.0.1:")
    second = proc.stdout.readline()
    assert second.strip() == f"OAuth login for this emulator written to {path} (use it with HOME={path.parent.parent})"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    creds = json.loads(path.read_text())["credentials"]
    assert creds["kind"] == "oauth"
    assert banner.split()[3] == creds["baseUrl"]
    first_token = creds["apiKey"]
    home = path.parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    env["HOME"] = str(home)

    def apps_list() -> None:
        listed = subprocess.run(
            [sys.executable, "-m", "lamina_batch", "apps", "list"], env=env, capture_output=True, text=True, timeout=60
        )
        assert listed.returncode == 0, listed.stderr
        assert "app_7Hk2" in listed.stdout

    apps_list()
    wait_for(lambda: describe_credentials(env={"HOME": str(home)}).refresh_needed, 10, "the 2 s token to be due")
    apps_list()  # refreshes it first, and writes the new pair back
    assert json.loads(path.read_text())["credentials"]["apiKey"] != first_token


def test_emulator_login_file_never_replaces_a_real_login(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An existing file holding a login for another server (the user's own) is refused: exit 2, left as it was."""
    path = write_document(tmp_path, apikey_document())
    before = path.read_bytes()
    assert main(["emulator", "--login-file", str(path)]) == 2
    assert "holds no emulator login" in capsys.readouterr().err
    assert path.read_bytes() == before
    assert main(["emulator", "--access-ttl", "5"]) == 2
    assert "--access-ttl goes with --login-file" in capsys.readouterr().err
