"""The library entry point: run_batch / run_batch_async on the emulator, its events and result, the README's
Python example executed as written, and signals left to the caller unless asked."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina_batch import BatchOptions, BatchResult, OptionError, RunState, StopReason, run_batch, run_batch_async
from lamina_batch import events as ev
from lamina_batch.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "catalogue"


def write_pipeline(folder: Path, rows: int, *, extra: str = "") -> Path:
    """A one-step pipeline over `rows` inline rows keyed by sku, downloading its outputs."""
    lines = ["version: 1", "name: lib", "matrix:", "  key: sku", "  rows:"]
    lines += [f"    - {{sku: S{i}, name: Item {i}}}" for i in range(rows)]
    lines += [
        "steps:",
        "  - id: hero",
        "    app: app_7Hk2",
        "    inputs:",
        '      Prompt: "Studio photo of {{ row.name }}"',
        "download:",
        '  path: "out/{{ row.sku }}{{ output.ext }}"',
        "run:",
        "  rate_limit: 100/s",
        extra,
    ]
    path = folder / "pipeline.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def api_env(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """LAMINA_BASE_URL / LAMINA_API_KEY point at a fast in-process emulator."""
    monkeypatch.setenv("LAMINA_BASE_URL", emulator.base_url)
    monkeypatch.setenv("LAMINA_API_KEY", emulator.key)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    return emulator


def readme_python_example() -> str:
    """The first ```python block under the README's "Use it from Python" heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python block in the README's 'Use it from Python' section"
    return match.group(1)


def test_readme_python_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's Python example, run from a copy of the repository's layout, plans and completes the catalogue
    batch on the in-process emulator and writes its gallery."""
    shutil.copytree(EXAMPLE, tmp_path / "examples" / "catalogue", ignore=shutil.ignore_patterns("out", "*.sqlite*"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LAMINA_API_KEY", raising=False)  # the emulator needs none
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(readme_python_example(), "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    result = namespace["result"]
    assert isinstance(result, BatchResult)
    assert result.ok
    assert (result.total, result.completed, result.starts) == (44, 44, 44)
    assert result.reports == (("html", Path("out/gallery.html")),)
    assert (tmp_path / "out" / "gallery.html").stat().st_size > 0
    # an emulator try keeps its own folder and manifest, apart from what a real run writes
    assert len(list((tmp_path / "examples" / "catalogue" / "lamina-emulator" / "out").rglob("*.png"))) == 44
    assert not (tmp_path / "examples" / "catalogue" / "out").exists()
    assert (tmp_path / "examples" / "catalogue" / "pipeline.emulator.lamina.sqlite").is_file()
    printed = capsys.readouterr().out
    assert "44 runs to start" in printed
    assert "44 of 44 runs completed, 44 started now" in printed
    assert printed.count(": completed") == 44


def test_run_batch_completes_reports_and_resumes(api_env: Emulator, tmp_path: Path) -> None:
    """run_batch emits PlanReady with per-step totals before any run, then a RunFinished per run and a
    ReportWritten per report; a second call reuses everything and starts nothing."""
    pipeline = write_pipeline(tmp_path, 5)
    seen: list[ev.Event] = []
    report = tmp_path / "results.csv"
    result = run_batch(pipeline, BatchOptions(reports=[("csv", report)]), on_event=seen.append)
    assert result.ok
    assert result.counts == {RunState.COMPLETED: 5}
    assert (result.starts, result.not_started, result.failed) == (5, 0, 0)
    assert result.manifest == tmp_path / "pipeline.lamina.sqlite"
    assert result.output_dir == tmp_path
    assert isinstance(seen[0], ev.PlanReady)
    assert seen[0].by_step == {"hero": 5}
    assert sum(isinstance(e, ev.RunFinished) for e in seen) == 5
    assert seen[-1] == ev.ReportWritten("csv", report)
    assert report.read_text(encoding="utf-8").count("S") >= 5
    assert api_env.stats.starts == 5

    again: list[ev.Event] = []
    second = run_batch(str(pipeline), on_event=again.append)
    assert second.ok
    assert second.starts == 0
    assert sum(isinstance(e, ev.RunReused) for e in again) == 5
    assert api_env.stats.starts == 5


def test_options_override_the_pipeline_and_a_shard_has_its_own_manifest(api_env: Emulator, tmp_path: Path) -> None:
    """Options given as on the command line ("1/2", "50/s", "10s") apply; a shard writes its own manifest."""
    pipeline = write_pipeline(tmp_path, 6)
    result = run_batch(pipeline, BatchOptions(shard="1/2", rate_limit="50/s", timeout="10s", concurrency=2))
    assert result.manifest.name == "pipeline.shard-1-of-2.lamina.sqlite"
    assert result.ok
    assert 0 < result.total < 6


def test_a_bad_option_is_refused_before_any_request(api_env: Emulator, tmp_path: Path) -> None:
    """A malformed option raises OptionError naming the field (and, worded for the CLI, the flag); nothing is sent."""
    pipeline = write_pipeline(tmp_path, 2)
    with pytest.raises(OptionError) as info:
        run_batch(pipeline, BatchOptions(rate_limit="fast"))
    assert str(info.value).startswith("rate_limit 'fast': ")
    assert info.value.worded(lambda name: "--" + name.replace("_", "-")).startswith("--rate-limit 'fast': ")
    with pytest.raises(OptionError, match="unknown report format"):
        run_batch(pipeline, BatchOptions(reports=[("pdf", tmp_path / "x.pdf")]))
    assert api_env.stats.requests == []


def test_run_batch_async_runs_on_the_callers_loop(api_env: Emulator, tmp_path: Path) -> None:
    """run_batch_async is awaited on a running loop (as in Jupyter); run_batch refuses to nest in one."""
    pipeline = write_pipeline(tmp_path, 3)

    async def notebook() -> BatchResult:
        with pytest.raises(RuntimeError, match="run_batch_async"):
            run_batch(pipeline)
        return await run_batch_async(pipeline)

    result = asyncio.run(notebook())
    assert result.ok
    assert result.starts == 3


def test_signals_are_left_alone_unless_asked(api_env: Emulator, tmp_path: Path) -> None:
    """By default the library installs no signal handler: SIGTERM keeps its handler while a batch runs."""
    pipeline = write_pipeline(tmp_path, 2)
    before = signal.getsignal(signal.SIGTERM)
    during: list[object] = []

    def watch(event: ev.Event) -> None:
        if isinstance(event, ev.PlanReady):
            during.append(signal.getsignal(signal.SIGTERM))

    assert run_batch(pipeline, on_event=watch).ok
    assert during == [before]


def test_handle_signals_stops_on_sigterm_and_the_next_call_resumes(
    tmp_path: Path, make_emulator: Callable[..., Emulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With handle_signals, a SIGTERM mid-batch stops new starts and returns SIGTERM as the stop reason (runs in
    flight stay recorded); the handlers are removed after, and a second call finishes without a second start."""
    emu = make_emulator(duration=(2.0, 3.0))
    monkeypatch.setenv("LAMINA_BASE_URL", emu.base_url)
    monkeypatch.setenv("LAMINA_API_KEY", emu.key)
    pipeline = write_pipeline(tmp_path, 4, extra="  concurrency: 2")
    sent: list[bool] = []
    before = signal.getsignal(signal.SIGTERM)

    def on_event(event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted) and not sent:
            assert signal.getsignal(signal.SIGTERM) is not before  # ours now, so this cannot kill pytest
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    result = run_batch(pipeline, BatchOptions(handle_signals=True), on_event=on_event)
    assert result.stop_reason is StopReason.SIGTERM
    assert not result.ok
    assert signal.getsignal(signal.SIGTERM) is before
    started = emu.stats.starts
    assert 1 <= started < 4
    final = run_batch(pipeline)
    assert final.ok
    assert emu.stats.starts == 4
    assert emu.stats.duplicate_starts() == {}


def test_batch_result_properties() -> None:
    """total counts runs never started; failed counts every bad state; ok needs a finished, clean batch."""
    base = BatchResult(
        pipeline_name="p",
        pipeline_path=Path("p.yaml"),
        manifest=Path("p.lamina.sqlite"),
        output_dir=Path(),
        stop_reason=StopReason.FINISHED,
        counts={RunState.COMPLETED: 3, RunState.FAILED: 1, RunState.UNKNOWN: 1},
        not_started=2,
        starts=4,
        download_failures=0,
    )
    assert (base.total, base.completed, base.failed, base.ok) == (7, 3, 2, False)
    clean = BatchResult(**{**base.__dict__, "counts": {RunState.COMPLETED: 3}, "not_started": 0})
    assert clean.ok
    assert not BatchResult(**{**clean.__dict__, "download_failures": 1}).ok
    assert not BatchResult(**{**clean.__dict__, "stop_reason": StopReason.MAX_STARTS}).ok


def test_run_batch_takes_the_stored_login_and_keeps_it_fresh(
    make_emulator: Callable[..., Emulator], private_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library follows the command's order: with no LAMINA_* set, the stored OAuth login (tokens living 1 s)
    runs the batch, refreshed as it goes; a login whose refresh is refused raises LoginRefreshError before any
    start."""
    from login_helpers import write_document

    from lamina_batch.emulator import OAuthConfig
    from lamina_batch.errors import LoginRefreshError

    monkeypatch.delenv("LAMINA_API_KEY", raising=False)
    monkeypatch.delenv("LAMINA_BASE_URL", raising=False)
    emu = make_emulator(oauth=OAuthConfig(access_ttl=1.0), duration=(0.5, 0.7))
    write_document(private_home, emu.seed_login().login_document(emu.base_url))
    result = run_batch(write_pipeline(tmp_path, 6, extra="  concurrency: 2"))
    assert result.ok
    assert emu.stats.oauth.refreshes >= 1
    assert emu.stats.oauth.reused_refresh_tokens == 0

    dead = emu.seed_login().login_document(emu.base_url)
    dead["credentials"]["refreshToken"] = "lma_mcp_rt_never_issued"
    write_document(private_home, dead)
    emu.expire_tokens()
    starts = emu.stats.starts
    with pytest.raises(LoginRefreshError, match="run `lamina login` again"):
        run_batch(write_pipeline(tmp_path, 7, extra="  concurrency: 2"))
    assert emu.stats.starts == starts
