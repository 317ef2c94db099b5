"""A manifest belongs to one server: the origin recorded on first use, refused against another (exit 2, both
named), an old manifest adopted once with a note, and `--emulator` runs kept apart from real ones."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from helpers import assert_exactly_once, cli_env, manifest_path, run_cli, write_pipeline

from lamina_batch.binding import META_KEY, Origin, origin_for
from lamina_batch.emulator import Emulator


def test_origin_is_scheme_host_port_prefix_and_dialect_without_userinfo() -> None:
    """Default ports are filled in, a trailing slash and userinfo are dropped; the emulator ignores its port."""
    a = origin_for("https://user:secret@App.UseLamina.ai/", "runs", emulator=False)
    assert a == Origin(emulator=False, dialect="runs", scheme="https", host="app.uselamina.ai", port=443, prefix="")
    assert "secret" not in a.to_json()
    assert "secret" not in a.describe()
    assert a.same_server(origin_for("https://app.uselamina.ai:443", "runs", emulator=False))
    assert not a.same_server(origin_for("https://app.uselamina.ai/proxy", "runs", emulator=False))
    assert not a.same_server(origin_for("https://app.uselamina.ai", "executions", emulator=False))
    assert not a.same_server(origin_for("http://127.0.0.1:1234", "runs", emulator=True))
    emu1 = origin_for("http://127.0.0.1:1234", "runs", emulator=True)
    assert emu1.same_server(origin_for("http://127.0.0.1:9999", "runs", emulator=True))
    assert Origin.from_json(a.to_json()) == a
    assert Origin.from_json("not json") is None


def test_a_manifest_refuses_another_server_naming_both(tmp_path: Path, make_emulator: Callable[..., Emulator]) -> None:
    """A batch run against one server, then resumed against another: exit 2, one line naming both origins and
    the fix, and nothing is started on the second server."""
    first, second = make_emulator(), make_emulator()
    pipeline = write_pipeline(tmp_path, 2, banner=False)
    assert run_cli(pipeline, cli_env(first)).returncode == 0
    res = run_cli(pipeline, cli_env(second))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert first.base_url in lines[0]
    assert second.base_url in lines[0]
    assert "--manifest" in lines[0]
    assert "delete" in lines[0]
    assert second.stats.starts == 0


def test_an_old_manifest_is_adopted_once_with_a_note(tmp_path: Path, make_emulator: Callable[..., Emulator]) -> None:
    """A manifest without the record (made before binding) is adopted by the first origin, said once on stderr;
    from then on it is bound."""
    emu = make_emulator()
    pipeline = write_pipeline(tmp_path, 2, banner=False)
    assert run_cli(pipeline, cli_env(emu)).returncode == 0
    with sqlite3.connect(manifest_path(pipeline)) as db:
        db.execute("DELETE FROM meta WHERE key = ?", (META_KEY,))
    again = run_cli(pipeline, cli_env(emu))
    assert again.returncode == 0, again.stderr
    assert "recorded no server" in again.stderr
    third = run_cli(pipeline, cli_env(emu))
    assert "recorded no server" not in third.stderr
    assert run_cli(pipeline, cli_env(make_emulator())).returncode == 2
    assert_exactly_once(emu, 2)


def test_emulator_runs_keep_their_own_manifest_and_files(tmp_path: Path, emulator: Emulator) -> None:
    """`--emulator` writes `<stem>.emulator.lamina.sqlite` and files under `lamina-emulator/`; the real run's
    default manifest and `out/` are untouched (status/report/review without --emulator say to add it), and a real
    run afterwards starts its own runs."""
    pipeline = write_pipeline(tmp_path, 2, banner=False, download=True)
    env = cli_env(emulator)
    tried = subprocess.run(
        [sys.executable, "-m", "lamina_batch", "run", str(pipeline), "--emulator", "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tried.returncode == 0, tried.stderr
    assert (tmp_path / "pipeline.emulator.lamina.sqlite").is_file()
    assert len(list((tmp_path / "lamina-emulator" / "out").rglob("*.png"))) == 2
    assert not manifest_path(pipeline).exists()
    assert not (tmp_path / "out").exists()
    for command in (["status"], ["report", "--format", "csv", "-o", str(tmp_path / "r.csv")], ["review", "--list"]):
        # only the emulator's manifest exists: the reading commands say to add --emulator
        looked = subprocess.run(
            [sys.executable, "-m", "lamina_batch", *command[:1], str(pipeline), *command[1:]],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert looked.returncode == 2
        assert "add --emulator" in looked.stderr
    real = run_cli(pipeline, env)
    assert real.returncode == 0, real.stderr
    assert "2 started now" in real.stdout
    assert len(list((tmp_path / "out").rglob("*.png"))) == 2
    # the emulator's manifest named explicitly is refused against a real server
    mixed = run_cli(pipeline, env, "--manifest", str(tmp_path / "pipeline.emulator.lamina.sqlite"))
    assert mixed.returncode == 2
    assert "emulator" in mixed.stderr
