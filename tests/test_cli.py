"""The CLI's own behaviour: argument handling, exit codes, and each command on the emulator (in-process main())."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lamina_batch import BatchResult, RunState, StopReason
from lamina_batch.cli import console, main
from lamina_batch.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "catalogue"


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A private copy of the catalogue example (so manifests and downloads land in tmp)."""
    dest = tmp_path / "catalogue"
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("out", "*.sqlite*"))
    return dest / "pipeline.yaml"


@pytest.fixture
def api_env(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """Point LAMINA_BASE_URL / LAMINA_API_KEY at a fast in-process emulator."""
    monkeypatch.setenv("LAMINA_BASE_URL", emulator.base_url)
    monkeypatch.setenv("LAMINA_API_KEY", emulator.key)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    return emulator


def test_no_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """`lamina-batch` alone shows usage on stderr and exits 2."""
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_misspelt_command_suggests_the_right_one(capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt command exits 2 with a did-you-mean hint, no traceback."""
    assert main(["valdate", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'validate'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("flag", "text"),
    [
        (["--shard", "3/2"], "1 <= I <= N"),
        (["--shard", "x"], "I/N"),
        (["--concurrency", "0"], "1 or more"),
        (["--report", "pdf=out.pdf"], "unknown report format"),
        (["--report", "htm=out.html"], "did you mean 'html'"),
        (["--timeout", "soon"], "not a duration"),
        (["--listen", "nowhere"], "HOST:PORT"),
    ],
)
def test_bad_run_flags_exit_2_with_one_clear_line(
    flag: list[str], text: str, example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each malformed flag value is refused by name before anything is read or sent."""
    assert main(["run", str(example), *flag]) == 2
    err = capsys.readouterr().err
    assert text in err
    assert "Traceback" not in err


def test_bad_rate_limit_flag_names_the_flag(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--rate-limit with a malformed rate exits 2 naming the flag and an example."""
    assert main(["run", str(example), "--rate-limit", "fast", "--emulator"]) == 2
    err = capsys.readouterr().err
    assert "--rate-limit" in err
    assert "90/min" in err


def test_validate_example_prints_one_summary_line(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`validate` on the shipped example exits 0 with rows/steps/runs on one line."""
    assert main(["validate", str(example)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert "valid" in out[0]
    assert "runs" in out[0]


def test_own_process_turns_the_collector_back_on_before_a_command(example: Path) -> None:
    """console() starts with the garbage collector off; main() turns it on before a command's work."""
    gc.disable()
    try:
        assert main(["validate", str(example)], own_process=True) == 0
        assert gc.isenabled()
    finally:
        gc.enable()


def test_validate_check_apps_on_the_emulator(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`validate --check-apps --emulator` fetches the apps and accepts the example's inputs."""
    assert main(["validate", str(example), "--check-apps", "--emulator"]) == 0
    assert "apps checked" in capsys.readouterr().out


def test_bare_pipeline_argument_means_run(example: Path, api_env: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    """`lamina-batch PIPELINE` runs it: exit 0 and every run completed; a second call starts nothing."""
    assert main([str(example), "--no-progress", "--rate-limit", "50/s"]) == 0
    starts = api_env.stats.starts
    assert starts > 0
    assert main([str(example), "--no-progress", "--rate-limit", "50/s"]) == 0
    assert api_env.stats.starts == starts
    assert "0 started now" in capsys.readouterr().out


def test_plan_status_and_reports_after_a_run(
    example: Path, api_env: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a run, `plan` says everything is reused, `status` exits 0 and every report format is written."""
    assert main(["run", str(example), "--no-progress", "--rate-limit", "50/s"]) == 0
    capsys.readouterr()
    assert main(["plan", str(example), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["totals"]["new"] == 0
    assert plan["totals"]["reused"] > 0
    assert main(["status", str(example)]) == 0
    assert "completed" in capsys.readouterr().out
    for fmt in ("csv", "jsonl", "junit", "html", "markdown"):
        target = tmp_path / f"report.{fmt}"
        assert main(["report", str(example), "--format", fmt, "-o", str(target)]) == 0
        assert target.stat().st_size > 0


def test_status_without_manifest_exits_2(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`status` before any run says there is no manifest yet and exits 2."""
    assert main(["status", str(example)]) == 2
    assert "no manifest yet" in capsys.readouterr().err


def test_apps_list_and_show(api_env: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    """`apps list` shows the demo apps; `apps show` prints parameters with options and defaults."""
    assert main(["apps", "list"]) == 0
    assert "app_7Hk2" in capsys.readouterr().out
    assert main(["apps", "show", "app_7Hk2"]) == 0
    out = capsys.readouterr().out
    assert "Aspect Ratio" in out
    assert "16:9" in out
    assert "required" in out
    assert main(["apps", "show", "app_7Hk2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["app_id"] == "app_7Hk2"


def test_apps_show_unknown_app_exits_2(api_env: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown app id is a clear one-line error with exit 2."""
    assert main(["apps", "show", "app_nope"]) == 2
    err = capsys.readouterr().err
    assert "404" in err
    assert "Traceback" not in err


def test_init_writes_a_pipeline_that_validates(
    api_env: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`init APP --csv` maps parameters to matching columns and the result passes `validate`."""
    csv = tmp_path / "products.csv"
    csv.write_text("sku,Prompt,colour\nA1,A red mug,red\nA2,A blue cup,blue\n", encoding="utf-8")
    out = tmp_path / "pipeline.yaml"
    assert main(["init", "app_7Hk2", "--csv", str(csv), "-o", str(out)]) == 0
    assert "row" in out.read_text()
    assert main(["validate", str(out)]) == 0
    assert main(["init", "app_7Hk2", "-o", str(out)]) == 2  # refuses to overwrite
    assert "--force" in capsys.readouterr().err


def test_merge_of_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`merge` names a missing source manifest and exits 2."""
    assert main(["merge", str(tmp_path / "a.sqlite"), "-o", str(tmp_path / "all.sqlite")]) == 2
    assert "no such manifest" in capsys.readouterr().err


def test_emulator_command_prints_its_banner_first() -> None:
    """`lamina-batch emulator` prints `Lamina emulator on URL (key K)` as its first line and serves."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lamina_batch", "emulator", "--key", "lma_test"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("Lamina emulator on http://127.0.0.1:")
        assert "(key lma_test)" in line
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_emulator_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed emulator config file is one line naming the file, exit 2."""
    cfg = tmp_path / "emu.yaml"
    cfg.write_text("rate_limit: lots\n", encoding="utf-8")
    assert main(["emulator", "--config", str(cfg)]) == 2
    assert "emu.yaml" in capsys.readouterr().err


def test_console_entry_runs_main_on_sys_argv(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The `lamina-batch` entry point runs main() on sys.argv and returns its exit code."""
    import gc

    monkeypatch.setattr(sys, "argv", ["lamina-batch", "--version"])
    try:
        assert console() == 0
    finally:
        gc.unfreeze()  # console() freezes the collector for a process about to exit; this one goes on
    assert "lamina-batch" in capsys.readouterr().out


def test_unusable_proxy_exits_2_with_one_line(
    api_env: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A proxy in the environment that cannot be used: exit 2, one line naming the variables, no traceback."""
    for name in ("HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "https_proxy", "no_proxy", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "not a url")
    monkeypatch.setenv("LAMINA_BASE_URL", "http://lamina.test")  # not loopback: loopback is never proxied
    assert main(["apps", "list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "HTTP_PROXY" in err[0]
    assert "Traceback" not in err[0]


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["apps", "lst"], "did you mean 'list'"),
        (["report", "p.yaml", "--format", "htm", "-o", "x"], "did you mean 'html'"),
        (["apps", "list", "--api", "run"], "did you mean 'runs'"),
    ],
)
def test_misspelt_choice_suggests_the_right_one(argv: list[str], hint: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt subcommand or choice value exits 2 with a did-you-mean from that argument's own choices."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert hint in err
    assert len(err.strip().splitlines()) == 2  # the error, then where to get help


def test_every_run_flag_sets_the_batch_option_of_its_name() -> None:
    """Each `run` flag's dest is a BatchOptions field (so a new flag needs only its field), except the display
    flags the CLI keeps for itself."""
    import argparse
    import dataclasses

    from lamina_batch.cli import GROUPS
    from lamina_batch.cli.parser import build_parser
    from lamina_batch.options import BatchOptions

    parser = build_parser(GROUPS)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    dests = {a.dest for a in sub.choices["run"]._actions if a.option_strings and a.dest != "help"}
    fields = {f.name for f in dataclasses.fields(BatchOptions)}
    assert dests - fields == {"no_progress", "progress_interval", "dry_run", "quiet", "verbose"}


def test_a_command_group_is_a_module_with_register(capsys: pytest.CaptureFixture[str]) -> None:
    """A group's register() adds a command through Commands; main-style dispatch calls its handler."""
    import argparse
    import types

    from lamina_batch.cli import GROUPS
    from lamina_batch.cli.common import Out
    from lamina_batch.cli.parser import Commands, build_parser

    def cmd_hello(args: argparse.Namespace, out: Out) -> int:
        out.result(f"hello {args.pipeline}")
        return 0

    def register(commands: Commands) -> None:
        commands.add("hello", "say hello", cmd_hello, pipeline=True)

    parser = build_parser([*GROUPS, types.SimpleNamespace(register=register)])
    assert parser.commands[-1] == "hello"
    args = parser.parse_args(["hello", "p.yaml"])
    assert args.handler(args, Out()) == 0
    assert capsys.readouterr().out == "hello p.yaml\n"


def _result(**changes: object) -> BatchResult:
    base = BatchResult(
        pipeline_name="cat",
        pipeline_path=Path("/p/cat.yaml"),
        manifest=Path("/p/cat.lamina.sqlite"),
        output_dir=Path("/p"),
        stop_reason=StopReason.FINISHED,
        counts={RunState.COMPLETED: 2},
        not_started=0,
        starts=2,
        download_failures=0,
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    ("changes", "code", "stream", "text"),
    [
        ({}, 0, "out", "cat: 2 runs: 2 completed; 2 started now"),
        ({"stop_reason": StopReason.SIGINT}, 130, "err", "Interrupted: run the same command again to resume."),
        ({"stop_reason": StopReason.SIGTERM}, 143, "err", "Terminated: run the same command again"),
        ({"stop_reason": StopReason.MAX_STARTS, "message": "max_starts 2 reached"}, 3, "err", "max_starts 2 reached"),
        ({"counts": {RunState.COMPLETED: 1, RunState.FAILED: 1}}, 1, "err", "`lamina-batch status /p/cat.yaml`"),
        ({"not_started": 1}, 1, "err", "cat: 3 runs: 2 completed, 1 not started; 2 started now. Some runs"),
        ({"download_failures": 1}, 1, "err", "; 1 downloads failed. Some runs did not complete"),
    ],
)
def test_run_exit_code_and_final_line(
    changes: dict[str, object], code: int, stream: str, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` picks its exit code from the BatchResult and says what to do next on stderr (stdout when all is well)."""
    from lamina_batch.cli.common import Out
    from lamina_batch.cli.run import finish

    assert finish(_result(**changes), Out()) == code
    captured = capsys.readouterr()
    assert text in (captured.out if stream == "out" else captured.err)


def test_run_view_prints_notices_signal_stops_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    """The run view prints a Notice and a signal's stop line on stderr, and `wrote FORMAT report to PATH`."""
    from lamina_batch import events as ev
    from lamina_batch.cli.common import Out
    from lamina_batch.cli.run import RunView

    view = RunView(Out(), progress=False, own_process=False)
    view(ev.PlanReady(total_runs=2, by_step={"hero": 2}))
    view(ev.Notice("backing off"))
    view(ev.Stopping(StopReason.MAX_FAILURES, "too many"))
    view(ev.Stopping(StopReason.SIGINT))
    view(ev.ReportWritten("html", Path("out/g.html")))
    view.close()
    captured = capsys.readouterr()
    assert captured.out == "wrote html report to out/g.html\n"
    assert captured.err.splitlines() == [
        "backing off",
        "lamina-batch: SIGINT: stopping new starts, recording in-flight runs (press again to exit at once)",
    ]


def test_progress_line_counts_in_flight_and_queued_and_estimates_the_rest() -> None:
    """Starts put runs in flight, finishes take them out; with some done, the line has a rate and an ETA
    (elapsed / done x remaining)."""
    from lamina_batch import events as ev
    from lamina_batch.cli.common import Out
    from lamina_batch.cli.render import Progress

    progress = Progress(Out(), {"hero": 4}, enabled=False)
    for i in range(3):
        progress(ev.RunStarted(f"id{i}", "hero", i + 1, None, f"run_{i}", 1))
    progress(ev.RunFinished("id0", "hero", 1, None, RunState.COMPLETED))
    line = progress.summary(60.0)
    assert line.startswith("hero 1/4 done (0 failed), 2 in flight, 1 queued; 3.0 starts/min")
    assert line.endswith("ETA 3m00s")
    progress.close()


def test_progress_off_a_terminal_is_a_summary_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a terminal, progress is a `[ Ns] step done/total (failed), in flight, queued` line on stderr
    (forced here, else on the timer)."""
    from lamina_batch import events as ev
    from lamina_batch.cli.common import Out
    from lamina_batch.cli.render import Progress

    progress = Progress(Out(), {"hero": 3, "banner": 3}, enabled=True)
    progress(ev.RunFinished("id1", "hero", 1, "A", RunState.COMPLETED))
    progress(ev.RunFinished("id2", "hero", 2, "B", RunState.FAILED, error="boom"))
    progress(ev.RunReused("id3", "banner", 1, "A"))
    progress.tick(force=True)
    progress.close()
    progress.tick(force=True)  # closed: nothing more
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert (
        "] hero 2/3 done (1 failed), 0 in flight, 1 queued; banner 1/3 done (0 failed), 0 in flight, 2 queued"
        in (lines[0])
    )
