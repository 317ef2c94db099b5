"""Benchmark plumbing: the emulator in its own process, contenders as measured subprocesses (wall, rusage),
the contenders' command lines, machine facts, and the Markdown/JSON rendering of results.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
APP_ID = "app_7Hk2"
KEY_ENV = "LAMINA_API_KEY"


# --------------------------------------------------------------------------- the emulator, out of process


@dataclass(frozen=True)
class EmuSettings:
    """What the emulator is told: run duration (seconds, or a [lo, hi] range), rate limit per window."""

    duration: float | tuple[float, float]
    rate_limit: int | None
    rate_window: float = 60.0
    seed: int = 1
    queued: float = 0.0

    def to_json(self) -> str:
        d = asdict(self)
        d["duration"] = list(self.duration) if isinstance(self.duration, tuple) else self.duration
        return json.dumps(d)


@dataclass(frozen=True)
class EmuStats:
    """Counts as the server saw them."""

    api_requests: int
    starts: int
    duplicate_starts: int
    sent_429: int
    peak_active: int
    webhooks_delivered: int
    completed: int
    server_cpu: float
    first_api_time: float | None = None  # wall-clock time of the first API request it answered
    estimate_requests: int = 0  # of api_requests: cost estimates (credits), at most one per app per invocation


class EmulatorProcess:
    """`emulator_proc.py` in a child process; `stats()` asks it for the server-side counters."""

    def __init__(self, settings: EmuSettings) -> None:
        self.settings = settings
        self._proc = subprocess.Popen(
            [sys.executable, str(HERE / "emulator_proc.py"), settings.to_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        banner = self._readline()
        # "Lamina emulator on http://127.0.0.1:PORT (key K)"
        try:
            self.base_url = banner.split(" on ", 1)[1].split(" ", 1)[0]
            self.key = banner.rsplit("(key ", 1)[1].rstrip(")\n ")
        except IndexError:
            self.close()
            raise RuntimeError(f"the emulator did not start: {banner!r}") from None

    def _readline(self) -> str:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the emulator process exited")
        return line

    def _ask(self, cmd: str) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(cmd + "\n")
        self._proc.stdin.flush()
        result: dict[str, Any] = json.loads(self._readline())
        return result

    def starts(self) -> int:
        return int(self._ask("starts")["starts"])

    def stats(self) -> EmuStats:
        d = self._ask("stats")
        return EmuStats(
            api_requests=d["api_requests"],
            starts=d["starts"],
            duplicate_starts=d["duplicate_starts"],
            sent_429=d["sent_429"],
            peak_active=d["peak_active"],
            webhooks_delivered=d["webhooks_delivered"],
            completed=int(d["statuses"].get("completed", 0)),
            server_cpu=float(d["server_cpu"]),
            estimate_requests=int(d.get("estimate_requests", 0)),
            first_api_time=d.get("first_api_time"),
        )

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
                self._proc.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


@contextmanager
def emulator(settings: EmuSettings) -> Iterator[EmulatorProcess]:
    emu = EmulatorProcess(settings)
    try:
        yield emu
    finally:
        emu.close()


# --------------------------------------------------------------------------- measured contender processes


@dataclass(frozen=True)
class ProcResult:
    """One contender process: exit code (negative = signal), wall seconds, CPU seconds, peak RSS in MiB."""

    exit_code: int
    wall: float
    cpu: float
    peak_rss_mib: float
    killed: bool
    timed_out: bool
    last_error: str
    launched: float = 0.0  # wall-clock time.time() when the process was started


def startup_time(res: ProcResult, st: EmuStats) -> float:
    """Seconds from launching the contender to its first API request (interpreter, imports, local checks)."""
    if st.first_api_time is not None and res.launched:
        return min(res.wall, max(0.0, st.first_api_time - res.launched))
    return 0.0


def equivalent_wall(res: ProcResult, st: EmuStats, scale: float) -> float:
    """Measured wall time in real-Lamina seconds: the batch part (from the contender's first API request on) is
    scaled by S; its start-up before that (interpreter, imports, local checks) is a fixed cost and is not."""
    startup = startup_time(res, st)
    return startup + (res.wall - startup) * scale


def run_measured(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    log: Path,
    cwd: Path,
    kill_when: Callable[[], bool] | None = None,
    timeout: float = 1800.0,
) -> ProcResult:
    """Run argv to completion (or SIGKILL it once `kill_when()` is true) and read its rusage with wait4."""
    with open(log, "wb") as out:
        launched = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        killed = timed_out = False
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if kill_when is not None and not killed and kill_when():
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
            elif time.perf_counter() - t0 > timeout and not timed_out:
                os.kill(proc.pid, signal.SIGKILL)
                timed_out = True
            time.sleep(0.01)
        wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped by wait4 already; keeps Popen from waiting again
    lines = [x for x in log.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
    return ProcResult(
        exit_code=code,
        wall=wall,
        cpu=ru.ru_utime + ru.ru_stime,
        peak_rss_mib=ru.ru_maxrss / 1024.0,  # Linux reports KiB
        killed=killed,
        timed_out=timed_out,
        launched=launched,
        last_error=lines[-1][:200] if lines and code != 0 else "",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- contenders' inputs and commands


def write_csv(path: Path, n: int) -> Path:
    """N rows with a unique `key` and `name`; every contender sends `name` as the Prompt input."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["key", "name"])
        for i in range(n):
            w.writerow([f"k{i:06d}", f"product {i:06d}"])
    return path


def write_pipeline(folder: Path, csv_path: Path, api: str) -> Path:
    path = folder / "bench.yaml"
    path.write_text(
        "version: 1\n"
        "name: bench\n"
        f"api: {api}\n"
        "matrix:\n"
        f"  csv: {csv_path.name}\n"
        "  key: key\n"
        "steps:\n"
        "  - id: hero\n"
        f"    app: {APP_ID}\n"
        "    inputs:\n"
        '      Prompt: "{{ row.name }}"\n',
        encoding="utf-8",
    )
    return path


def contender_env(emu: EmulatorProcess) -> dict[str, str]:
    env = dict(os.environ)
    env[KEY_ENV] = emu.key
    env["LAMINA_BASE_URL"] = emu.base_url
    env["PYTHONPATH"] = str(REPO)
    env.pop("GITHUB_STEP_SUMMARY", None)  # the Markdown report must not land in a CI job summary
    # Contenders start as installed code does, from .pyc caches (see precompile); a PYTHONDONTWRITEBYTECODE
    # inherited from the shell (this sandbox exports it) would recompile lamina-batch's modules at every start.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def precompile() -> None:
    """Byte-compile the package, as `pip install` does, so no contender pays for compiling it at start-up."""
    import compileall

    compileall.compile_dir(REPO / "lamina_batch", quiet=1)


def baseline_argv(
    script: str, emu: EmulatorProcess, csv_path: Path, concurrency: int, poll: float, api: str
) -> list[str]:
    return [
        sys.executable,
        str(HERE / "baselines" / script),
        "--base-url",
        emu.base_url,
        "--csv",
        str(csv_path),
        "--concurrency",
        str(concurrency),
        "--poll-interval",
        f"{poll:g}",
        "--api",
        api,
    ]


def lamina_argv(
    pipeline: Path, concurrency: int, rate: str | None, poll: float, webhook_port: int | None = None
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "lamina_batch",
        "run",
        str(pipeline),
        "--no-progress",
        "--concurrency",
        str(concurrency),
        "--poll-interval",
        f"{poll:g}s",
    ]
    if rate is not None:
        argv += ["--rate-limit", rate]
    if webhook_port is not None:
        argv += ["--webhook-url", f"http://127.0.0.1:{webhook_port}/hook", "--listen", f"127.0.0.1:{webhook_port}"]
    return argv


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Row:
    """One line of the table. `wall` is measured; `wall_equiv` = wall x scale (what real Lamina would take)."""

    workload: str
    contender: str
    concurrency: int
    n: int
    completed: int
    wall: float | None
    wall_equiv: float | None
    ideal_equiv: float
    requests: int
    requests_per_run: float | None
    sent_429: int
    cpu: float | None
    cpu_per_1000: float | None
    peak_rss_mib: float | None
    duplicate_starts: int
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    uname = os.uname()
    return {
        "uname": f"{uname.sysname} {uname.release} {uname.machine}",
        "cpu": cpu or "unknown",
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def _f(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _t(x: float | None) -> str:
    """Seconds: whole above 100, one decimal below (smoke runs are sub-second)."""
    return _f(x, 0 if x is not None and x >= 100 else 1)


def markdown(meta: dict[str, Any], rows: Sequence[Row]) -> str:
    """The table the README shows, with how it was produced and what each workload's ideal means."""
    m = meta["machine"]
    out = [
        f"Measured {meta['date']} with `{meta['command']}` on {m['uname']}, {m['cpu']}, {m['cores']} cores, "
        f"Python {m['python']}. Scale S = {meta['scale']:g}: run durations, Lamina's rate window and every "
        "contender's poll interval are divided by S; *real-time equivalent* is the measured wall time with its "
        "batch part (from the contender's first API request, as the emulator saw it) multiplied by S and its "
        "start-up before that (interpreter, imports, local checks: a fixed cost) left as measured. Workloads 2 "
        "and 6 are not scaled. The emulator and the contender share the same cores. Requests, 429s and "
        "duplicate starts are counted by the emulator; CPU and peak RSS are the contender process's own "
        "rusage. *peak in flight* is the most runs the emulator had queued or running at once.",
        "",
        "| workload | contender | C | done/N | wall s | real-time equivalent s | ideal s | req/run | 429s | CPU s "
        "| CPU s/1k runs | peak RSS MiB | peak in flight | dup starts | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.workload} | {r.contender} | {r.concurrency} | {r.completed}/{r.n} | {_f(r.wall)} "
            f"| {_t(r.wall_equiv)} | {_t(r.ideal_equiv)} | {_f(r.requests_per_run, 2)} | {r.sent_429} "
            f"| {_f(r.cpu, 2)} | {_f(r.cpu_per_1000, 2)} | {_f(r.peak_rss_mib)} "
            f"| {r.extra.get('peak_active', 'n/a')} | {r.duplicate_starts} | {r.note} |"
        )
    out += ["", "Ideal per workload:", ""]
    out += [f"- **{name}**: {text}" for name, text in meta["ideals"].items()]
    if meta.get("checks"):
        out += ["", "Issue 4 targets (computed from the rows above):", ""]
        out += [f"- {c}" for c in meta["checks"]]
    return "\n".join(out) + "\n"


def readme_section(meta: dict[str, Any], rows: Sequence[Row]) -> str:
    """The README's performance section: generated from the measured rows, never typed in."""
    return (
        "## Performance\n\n"
        "lamina-batch against the two scripts a user would otherwise write, on the same emulator workloads in "
        "one run: `benchmarks/baselines/guide_script.py` (the Lamina guide's example: start, then poll every "
        "5 s, one CSV row after another) and `benchmarks/baselines/async_script.py` (asyncio, a semaphore of C, "
        "5 s polling); both sleep `Retry-After` on a 429. Both are baselines written for this comparison. "
        "Reproduce with `make bench` (about 12 minutes); CI runs `make bench-smoke` (seconds, no thresholds). "
        "Raw figures: `benchmarks/results/latest.json`.\n\n" + markdown(meta, rows)
    )


def load_results(path: Path) -> tuple[dict[str, Any], list[Row]]:
    """Read a latest.json back (to re-render the Markdown without measuring again)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    return doc["meta"], [Row(**r) for r in doc["rows"]]


def write_results(folder: Path, meta: dict[str, Any], rows: Sequence[Row]) -> tuple[Path, Path]:
    """latest.json (every figure), latest.md (the table) and README-section.md (for the README)."""
    folder.mkdir(parents=True, exist_ok=True)
    js = folder / "latest.json"
    md = folder / "latest.md"
    js.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2) + "\n", encoding="utf-8")
    md.write_text(markdown(meta, rows), encoding="utf-8")
    (folder / "README-section.md").write_text(readme_section(meta, rows), encoding="utf-8")
    return js, md
