"""Fakes and helpers the executor's unit tests share: a fake clock, a scripted fake client, pipelines, a runner."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lamina_batch.downloads import Downloader
from lamina_batch.errors import (
    AuthError,
    ConnectError,
    InputValidationError,
    ServerError,
    UnknownOutcomeError,
)
from lamina_batch.executor import ExecOptions, Executor, RunResult
from lamina_batch.manifest import Manifest
from lamina_batch.models import Pipeline, RemoteRun, RunOutput, RunPage, RunState
from lamina_batch.spec import load_pipeline

__all__ = [
    "FakeClient",
    "FakeClock",
    "execute",
    "iso",
    "make_executor",
    "open_manifest",
    "rows",
    "states",
    "with_run",
    "write_pipeline",
]


class FakeClock:
    """Wall and monotonic time in one: only `sleep` (and the fake server's holds) move it."""

    def __init__(self) -> None:
        self.t = time.time()
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def iso(self) -> str:
        return datetime.fromtimestamp(self.t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


@dataclasses.dataclass
class FakeRun:
    run_id: str
    app_id: str
    inputs: dict[str, Any]
    created: float
    duration: float
    fail: bool
    status: str = "queued"
    hang: bool = False


class FakeClient:
    """Implements the LaminaClient methods the executor uses. Scripted start actions:
    ok | connect (nothing sent) | lost (run created, reply lost) | lost-none (nothing created, reply lost)
    | auth | invalid | hang (run created, the reply never comes) | late (run created, reply after 50 ms)."""

    def __init__(self, clock: FakeClock, *, dialect: str = "runs") -> None:
        self.clock = clock
        self.supports_wait = dialect == "runs"
        self.supports_list = dialect == "runs"
        self.supports_cancel = dialect == "runs"
        self.runs: dict[str, FakeRun] = {}
        self.start_script: list[str] = []
        self.wait_errors = 0
        self.fail_first: Counter[str] = Counter()
        self.fail_marker = "[[fail]]"
        self.duration = 0.0
        self.hang = False
        self.requests: list[tuple[str, str]] = []
        self.active = 0
        self.peak_active = 0
        self.starting: Counter[str] = Counter()
        self.peak_starting = 0
        self.cancelled: list[str] = []
        self.first_poll_delays: list[float] = []
        self.extra_listed: list[RemoteRun] = []
        self.durations: list[float] = []  # per created run, in order; then `duration`
        self.budget_bound = False

    def _n(self) -> str:
        return f"run_{len(self.runs) + 1:04d}"

    def _create(self, app_id: str, inputs: Mapping[str, Any]) -> FakeRun:
        fail = any(self.fail_marker in str(v) for v in inputs.values())
        if self.fail_first[app_id] > 0:
            self.fail_first[app_id] -= 1
            fail = True
        duration = self.durations.pop(0) if self.durations else self.duration
        run = FakeRun(self._n(), app_id, dict(inputs), self.clock.now(), duration, fail, hang=self.hang)
        self.runs[run.run_id] = run
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        return run

    def _remote(self, run: FakeRun) -> RemoteRun:
        done = run.status in ("completed", "failed", "cancelled")
        if not done and not run.hang and self.clock.now() >= run.created + run.duration - 1e-3:
            run.status = "failed" if run.fail else "completed"
            self.active -= 1
            done = True
        outputs: tuple[RunOutput, ...] = ()
        if run.status == "completed":
            outputs = (RunOutput("o1", "Image", "image", f"https://files.test/{run.run_id}.png", "completed"),)
        return RemoteRun(
            run.run_id,
            run.status,
            error_message="boom" if run.status == "failed" else None,
            created_at=iso(run.created),
            started_at=iso(run.created),
            completed_at=iso(min(run.created + run.duration, self.clock.now())) if done else None,
            outputs=outputs,
        )

    async def start(
        self, app_id: str, inputs: Mapping[str, Any], *, outputs: Any = None, webhook: str | None = None
    ) -> RemoteRun:
        self.requests.append(("start", app_id))
        self.starting[app_id] += 1
        self.peak_starting = max(self.peak_starting, self.starting[app_id])
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        finally:
            self.starting[app_id] -= 1
        action = self.start_script.pop(0) if self.start_script else "ok"
        if action == "connect":
            raise ConnectError("refused")
        if action == "auth":
            raise AuthError("key rejected", status=401, code="AUTH_INVALID_KEY")
        if action == "invalid":
            raise InputValidationError("bad input", status=400, code="VALIDATION_ERROR")
        if action == "lost-none":
            raise UnknownOutcomeError("reply lost")
        run = self._create(app_id, inputs)
        if action == "hang":
            await asyncio.Event().wait()
        if action == "late":
            await asyncio.sleep(0.05)
        if action == "lost":
            raise UnknownOutcomeError("reply lost")
        return RemoteRun(run.run_id, "queued")

    async def wait(self, run_id: str, timeout: float = 60) -> RemoteRun:  # noqa: ASYNC109 - server-side hold
        self.requests.append(("wait", run_id))
        if self.wait_errors > 0:
            self.wait_errors -= 1
            raise ServerError("unavailable", status=503)
        run = self.runs[run_id]
        if run.hang:
            await asyncio.Event().wait()
        remote = self._remote(run)
        if not remote.terminal:
            self.clock.t += min(timeout, max(0.0, run.created + run.duration - self.clock.now()))
            remote = self._remote(run)
        return dataclasses.replace(remote, timed_out=not remote.terminal)

    async def get_run(self, run_id: str) -> RemoteRun:
        run = self.runs[run_id]
        if not any(r == ("get", run_id) for r in self.requests):
            self.first_poll_delays.append(self.clock.now() - run.created)
        self.requests.append(("get", run_id))
        return self._remote(run)

    async def list_runs(
        self,
        app_id: str | None = None,
        status: str | None = None,
        since: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> RunPage:
        self.requests.append(("list", app_id or ""))
        items = [self._remote(r) for r in reversed(self.runs.values()) if r.app_id == app_id]
        items = self.extra_listed + items
        page = items[offset : offset + limit]
        return RunPage(tuple(page), len(items), limit, offset)

    async def cancel(self, run_id: str) -> RemoteRun | None:
        self.requests.append(("cancel", run_id))
        run = self.runs[run_id]
        if run.status not in ("completed", "failed", "cancelled"):
            run.status = "cancelled"
            self.active -= 1
        self.cancelled.append(run_id)
        return self._remote(run)

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.requests if k == kind)


# --------------------------------------------------------------------------- helpers


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def write_pipeline(
    tmp_path: Path,
    rows: list[dict[str, str]],
    *,
    chain: bool = False,
    api: str = "runs",
    download: bool = False,
    extra_step: str = "",
) -> Pipeline:
    lines = ["version: 1", "name: t", f"api: {api}", "matrix:", "  key: sku", "  rows:"]
    for r in rows:
        lines.append("    - {" + ", ".join(f'{k}: "{v}"' for k, v in r.items()) + "}")
    lines += [
        "steps:",
        "  - id: hero",
        "    app: app_hero",
        '    inputs: {Prompt: "photo of {{ row.name }}"}',
    ]
    if chain:
        lines += [
            "  - id: banner",
            "    app: app_banner",
            "    needs: [hero]",
            '    inputs: {Image: "{{ steps.hero.output }}"}',
        ]
    if extra_step:
        lines += extra_step.splitlines()
    if download:
        lines += ["download:", '  path: "out/{{ row.sku }}/{{ step.id }}{{ output.ext }}"']
    path = tmp_path / "p.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_pipeline(path)


def rows(n: int, fail: set[int] | None = None) -> list[dict[str, str]]:
    fail = fail or set()
    return [{"sku": f"S{i}", "name": f"item {i}{' [[fail]]' if i in fail else ''}"} for i in range(1, n + 1)]


def with_run(pipeline: Pipeline, **changes: Any) -> Pipeline:
    return dataclasses.replace(pipeline, run=dataclasses.replace(pipeline.run, **changes))


def open_manifest(tmp_path: Path, clock: FakeClock) -> Manifest:
    """The writer's manifest of the test pipeline `t`, timestamped by the fake clock."""
    return Manifest.open(tmp_path / "t.sqlite", pipeline_name="t", writer=True, clock=clock.iso)


def make_executor(
    pipeline: Pipeline,
    manifest: Manifest,
    client: FakeClient,
    clock: FakeClock,
    options: ExecOptions | None = None,
    **kwargs: Any,
) -> Executor:
    """An Executor on the fake client, with the fake clock as wall clock, monotonic clock and sleep."""
    kwargs.setdefault("sleep", clock.sleep)
    return Executor(
        pipeline,
        manifest,
        client,  # type: ignore[arg-type]
        options or ExecOptions(),
        clock=clock.now,
        wall_clock=clock.now,
        **kwargs,
    )


def execute(
    pipeline: Pipeline,
    manifest: Manifest,
    client: FakeClient,
    clock: FakeClock,
    options: ExecOptions | None = None,
    downloader: Downloader | None = None,
) -> tuple[RunResult, list[Any]]:
    """Run the batch to its end; its result and every event it emitted."""
    seen: list[Any] = []
    executor = make_executor(pipeline, manifest, client, clock, options, emit=seen.append, downloader=downloader)
    result = asyncio.run(executor.run())
    return result, seen


def states(manifest: Manifest) -> Counter[RunState]:
    return Counter(r.state for r in manifest.iter_runs())
