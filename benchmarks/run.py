"""The benchmark entry point: lamina-batch against two baseline scripts on the same emulator workloads.

    .venv/bin/python benchmarks/run.py [--scale 10] [--only limited|overhead|executions|webhook|resume|memory]
    .venv/bin/python benchmarks/run.py --smoke          # every contender, tiny workloads, seconds; writes to a temp dir
Prints a Markdown table and writes benchmarks/results/latest.{json,md} (or --out DIR).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # the benchmarks folder is not a package
    HERE,
    EmulatorProcess,
    EmuSettings,
    ProcResult,
    Row,
    baseline_argv,
    contender_env,
    emulator,
    equivalent_wall,
    free_port,
    lamina_argv,
    load_results,
    machine_info,
    markdown,
    precompile,
    run_measured,
    startup_time,
    write_csv,
    write_pipeline,
    write_results,
)

GUIDE = "baseline: guide script"
ASYNC = "baseline: async script"
LAMINA = "lamina-batch"
WORKLOADS = ("limited", "overhead", "executions", "webhook", "resume", "memory")
LAMINA_LIMIT = 100  # Lamina's requests per minute per client IP
NO_LIMIT = "100000/s"


@dataclass(frozen=True)
class Params:
    """Workload sizes. Durations and poll intervals are in real (unscaled) seconds unless marked otherwise."""

    scale: float = 10.0
    n_limited: int = 200
    dur_limited: tuple[float, float] = (2.0, 4.0)
    conc_limited: tuple[int, ...] = (8, 32)
    n_overhead: int = 2000
    dur_overhead: float = 0.5  # not scaled
    conc_overhead: int = 100
    poll_overhead: float = 5.0  # the baselines' poll interval in workload 2 (not scaled)
    repeats_overhead: int = 3  # lamina-batch's workload 2 runs this often; the table shows the median run
    conc_resume: int = 8
    n_memory: tuple[int, int] = (1000, 20000)
    dur_memory: float = 0.05  # not scaled
    conc_memory: int = 100
    poll_baseline: float = 5.0
    poll_lamina: float = 4.0
    timeout: float = 1800.0

    @property
    def mean_limited(self) -> float:
        return sum(self.dur_limited) / 2


SMOKE = Params(
    scale=40.0,
    n_limited=10,
    conc_limited=(4,),
    n_overhead=20,
    dur_overhead=0.1,
    conc_overhead=10,
    poll_overhead=0.1,
    repeats_overhead=1,
    conc_resume=4,
    n_memory=(20, 60),
    dur_memory=0.01,
    conc_memory=10,
    timeout=120.0,
)


class Bench:
    """Runs cases one at a time (each with a fresh emulator process) and collects rows."""

    def __init__(self, params: Params, tmp: Path, log: Callable[[str], None]) -> None:
        self.p = params
        self.tmp = tmp
        self.log = log
        self.rows: list[Row] = []
        self._case = 0

    # ---- helpers ---------------------------------------------------------------------------------

    def _folder(self, name: str, n: int, api: str) -> tuple[Path, Path, Path]:
        self._case += 1
        folder = self.tmp / f"{self._case:02d}-{name}"
        folder.mkdir(parents=True)
        csv_path = write_csv(folder / "rows.csv", n)
        return folder, csv_path, write_pipeline(folder, csv_path, api)

    def _limited_emu(self) -> EmuSettings:
        s = self.p.scale
        lo, hi = self.p.dur_limited
        return EmuSettings(duration=(lo / s, hi / s), rate_limit=LAMINA_LIMIT, rate_window=60.0 / s)

    def _lamina_rate(self) -> str | None:
        # No --rate-limit: lamina-batch spends the budget the emulator states in its RateLimit headers (the
        # default rate only paces it until the first reply), exactly as it would against Lamina.
        return None

    def _argv(
        self, contender: str, emu: EmulatorProcess, folder: Path, csv_path: Path, pipeline: Path, conc: int, **kw: Any
    ) -> list[str]:
        api: str = kw.get("api", "runs")
        if contender == LAMINA:
            return lamina_argv(pipeline, conc, kw["rate"], kw["lamina_poll"], kw.get("webhook_port"))
        script = "guide_script.py" if contender == GUIDE else "async_script.py"
        return baseline_argv(script, emu, csv_path, conc, kw["baseline_poll"], api)

    def _row(
        self,
        workload: str,
        contender: str,
        conc: int,
        n: int,
        res: ProcResult,
        emu: EmulatorProcess,
        *,
        scale: float,
        ideal: float,
        note: str = "",
        extra_requests: int = 0,
    ) -> Row:
        st = emu.stats()
        completed = min(n, st.completed)
        if res.exit_code != 0 or res.timed_out:
            why = "timed out" if res.timed_out else f"exit {res.exit_code}"
            note = f"not available ({why}: {res.last_error.replace('|', '/')})" + (f"; {note}" if note else "")
        row = Row(
            workload=workload,
            contender=contender,
            concurrency=conc,
            n=n,
            completed=completed,
            wall=round(res.wall, 2),
            wall_equiv=round(equivalent_wall(res, st, scale), 1),
            ideal_equiv=round(ideal, 1),
            requests=st.api_requests + extra_requests,
            requests_per_run=round(st.api_requests / completed, 3) if completed else None,
            sent_429=st.sent_429,
            cpu=round(res.cpu, 3),
            cpu_per_1000=round(res.cpu * 1000 / completed, 3) if completed else None,
            peak_rss_mib=round(res.peak_rss_mib, 1),
            duplicate_starts=st.duplicate_starts,
            note=note,
            extra={
                "server_cpu": round(st.server_cpu, 2),
                "peak_active": st.peak_active,
                "starts": st.starts,
                "estimate_requests": st.estimate_requests,  # included in requests and requests_per_run
                "startup": round(startup_time(res, st), 2),
            },
        )
        self.rows.append(row)
        self.log(
            f"  {workload} | {contender} | C={conc} | {completed}/{n} | {res.wall:.1f}s | "
            f"req/run {row.requests_per_run} | 429s {row.sent_429} | dup {row.duplicate_starts} {note}"
        )
        return row

    def case(
        self,
        workload: str,
        contender: str,
        *,
        n: int,
        conc: int,
        settings: EmuSettings,
        scale: float,
        ideal: float,
        api: str = "runs",
        rate: str = NO_LIMIT,
        baseline_poll: float = 5.0,
        lamina_poll: float = 4.0,
        webhook: bool = False,
    ) -> Row:
        folder, csv_path, pipeline = self._folder(f"{workload}-{contender.split()[-1]}-{conc}", n, api)
        with emulator(settings) as emu:
            argv = self._argv(
                contender,
                emu,
                folder,
                csv_path,
                pipeline,
                conc,
                api=api,
                rate=rate,
                baseline_poll=baseline_poll,
                lamina_poll=lamina_poll,
                webhook_port=free_port() if webhook else None,
            )
            res = run_measured(
                argv, env=contender_env(emu), log=folder / "output.log", cwd=folder, timeout=self.p.timeout
            )
            return self._row(workload, contender, conc, n, res, emu, scale=scale, ideal=ideal)

    # ---- the workloads ---------------------------------------------------------------------------

    def _ideal_limited(self, n: int, conc: int, requests_per_run: float) -> float:
        by_duration = math.ceil(n / conc) * self.p.mean_limited
        by_rate = n * requests_per_run * 60.0 / LAMINA_LIMIT
        return max(by_duration, by_rate)

    def limited(self, name: str = "1 runs API, 100/min", api: str = "runs") -> None:
        p = self.p
        s = p.scale
        run = partial(
            self.case,
            name,
            n=p.n_limited,
            settings=self._limited_emu(),
            scale=s,
            api=api,
            baseline_poll=p.poll_baseline / s,
            lamina_poll=p.poll_lamina / s,
            rate=self._lamina_rate(),
        )
        run(GUIDE, conc=1, ideal=self._ideal_limited(p.n_limited, 1, 2))
        for c in p.conc_limited:
            run(ASYNC, conc=c, ideal=self._ideal_limited(p.n_limited, c, 2))
            run(LAMINA, conc=c, ideal=self._ideal_limited(p.n_limited, c, 2))

    def executions(self) -> None:
        self.limited("3 executions API, 100/min", api="executions")

    def overhead(self) -> None:
        p = self.p
        name = "2 no limit, overhead"
        n, c, d = p.n_overhead, p.conc_overhead, p.dur_overhead
        ideal = math.ceil(n / c) * d
        settings = EmuSettings(duration=d, rate_limit=None)
        # The guide's loop is sequential: N x poll interval at the very least, hours for N=2000; not run.
        self.rows.append(
            Row(
                workload=name,
                contender=GUIDE,
                concurrency=1,
                n=n,
                completed=0,
                wall=None,
                wall_equiv=None,
                ideal_equiv=round(ideal, 1),
                requests=0,
                requests_per_run=None,
                sent_429=0,
                cpu=None,
                cpu_per_1000=None,
                peak_rss_mib=None,
                duplicate_starts=0,
                note=f"not run: sequential, >= N x {p.poll_overhead:g} s poll = {n * p.poll_overhead:.0f} s",
            )
        )
        run = partial(self.case, name, n=n, conc=c, settings=settings, scale=1.0, ideal=ideal)
        run(ASYNC, baseline_poll=p.poll_overhead)
        # ~1 s of a 10 s ideal is what is judged here, and this shared 2-core machine moves single runs by a
        # few tenths of a second: run it more than once and show the median run (every run's wall in `extra`).
        tries = [run(LAMINA, rate=NO_LIMIT, lamina_poll=p.poll_lamina) for _ in range(max(1, p.repeats_overhead))]
        if len(tries) > 1:
            for row in tries:
                self.rows.remove(row)
            median = sorted(tries, key=lambda r: math.inf if r.wall is None else r.wall)[len(tries) // 2]
            median.extra["walls"] = [r.wall for r in tries]
            self.rows.append(median)

    def webhook(self) -> None:
        p = self.p
        s = p.scale
        name = "4 webhooks, 100/min"
        for c in p.conc_limited:
            self.case(
                name,
                LAMINA,
                n=p.n_limited,
                conc=c,
                settings=self._limited_emu(),
                scale=s,
                ideal=self._ideal_limited(p.n_limited, c, 1),
                rate=self._lamina_rate(),
                lamina_poll=p.poll_lamina / s,
                webhook=True,
            )

    def resume(self) -> None:
        p = self.p
        s = p.scale
        name = "5 resume after kill -9 at 50%"
        n, c = p.n_limited, p.conc_resume
        ideal = self._ideal_limited(n - n // 2, c, 2)
        for contender in (ASYNC, LAMINA):
            folder, csv_path, pipeline = self._folder(f"resume-{contender.split()[-1]}", n, "runs")
            with emulator(self._limited_emu()) as emu:
                argv = self._argv(
                    contender,
                    emu,
                    folder,
                    csv_path,
                    pipeline,
                    c,
                    rate=self._lamina_rate(),
                    baseline_poll=p.poll_baseline / s,
                    lamina_poll=p.poll_lamina / s,
                )
                env = contender_env(emu)
                first = run_measured(
                    argv,
                    env=env,
                    log=folder / "first.log",
                    cwd=folder,
                    kill_when=partial(_reached, emu, n // 2),
                    timeout=p.timeout,
                )
                at_kill = emu.starts()
                # A baseline has no checkpoint: running it again is all a user can do.
                second = run_measured(argv, env=env, log=folder / "second.log", cwd=folder, timeout=p.timeout)
                how = "rerun from scratch" if contender != LAMINA else "same command again"
                note = (
                    f"killed after {first.wall:.1f} s at {at_kill} starts; {how}; wall = the second run"
                    if first.killed
                    else f"first run ended before the kill (exit {first.exit_code})"
                )
                self._row(name, contender, c, n, second, emu, scale=s, ideal=ideal, note=note)

    def memory(self) -> None:
        p = self.p
        name = "6 memory, no limit"
        settings = EmuSettings(duration=p.dur_memory, rate_limit=None)
        for n in p.n_memory:
            ideal = math.ceil(n / p.conc_memory) * p.dur_memory
            self.case(
                name, LAMINA, n=n, conc=p.conc_memory, settings=settings, scale=1.0, ideal=ideal,
                rate=NO_LIMIT, lamina_poll=p.poll_lamina,
            )  # fmt: skip


def _reached(emu: EmulatorProcess, starts: int) -> bool:
    return emu.starts() >= starts


def ideals(p: Params) -> dict[str, str]:
    """What 'ideal' means per workload, with the numbers used (equivalent real seconds)."""
    n, d = p.n_limited, p.mean_limited
    rate_min = n * 2 * 60 / LAMINA_LIMIT
    cs = ", ".join(f"{math.ceil(n / c) * d:g} s at C={c}" for c in p.conc_limited)
    return {
        "1 runs API, 100/min": (
            f"max(ceil(N/C) x mean duration, 2 requests a run under {LAMINA_LIMIT}/min) with N={n}, runs "
            f"{p.dur_limited[0]:g}-{p.dur_limited[1]:g} s: the limit gives {rate_min:g} s; duration alone {cs}; "
            f"sequential (C=1) {n * d:g} s. The emulator counts fixed windows from a client's first request, so a "
            "client that bursts at each window start (and takes the 429s) can beat the steady-rate figure by up "
            "to one window; lamina-batch spends the budget the server states (RateLimit-Remaining/-Reset), "
            "so it can too, without a 429"
        ),
        "2 no limit, overhead": (
            f"ceil(N/C) x duration = ceil({p.n_overhead}/{p.conc_overhead}) x {p.dur_overhead:g} s = "
            f"{math.ceil(p.n_overhead / p.conc_overhead) * p.dur_overhead:g} s (issue 4: lamina-batch <= 1.1x that)"
        ),
        "3 executions API, 100/min": "as workload 1 (a perfectly adaptive poller also needs 2 requests a run)",
        "4 webhooks, 100/min": (
            f"as workload 1 but 1 request a run (the start): the limit gives {n * 60 / LAMINA_LIMIT:g} s"
        ),
        "5 resume after kill -9 at 50%": (
            f"the remaining {n - n // 2} runs as workload 1 at C={p.conc_resume}, with 0 duplicate starts"
        ),
        "6 memory, no limit": (
            f"ceil(N/C) x {p.dur_memory:g} s at C={p.conc_memory}; issue 4 asks peak RSS at N={p.n_memory[1]} "
            f"<= 1.5x N={p.n_memory[0]}"
        ),
    }


def _split(row: Row, ideal: float) -> str:
    startup = row.extra.get("startup")
    if not startup or row.wall is None:
        return ""
    batch = row.wall - startup
    return (f", of which {startup:.2f} s start-up before the first request (interpreter, imports, local checks of "
            f"every row) and {batch:.2f} s = {batch / ideal:.2f}x from the first request to the end")  # fmt: skip


def checks(rows: Sequence[Row], p: Params) -> list[str]:
    """Issue 4's targets, judged from the measured rows."""
    out: list[str] = []

    def lam(workload_prefix: str) -> list[Row]:
        return [r for r in rows if r.contender == LAMINA and r.workload.startswith(workload_prefix) and not r.note]

    ok = {True: "met", False: "NOT met"}
    w1 = lam("1 ")
    if w1:
        vals = [r.requests_per_run or 0.0 for r in w1]
        out.append(f"requests per completed run, runs API (workload 1): {', '.join(f'{v:.2f}' for v in vals)} "
                   f"(target <= 2.1: {ok[max(vals) <= 2.1]})")  # fmt: skip
    w2 = lam("2 ")
    if w2 and w2[0].wall is not None:
        ideal = w2[0].ideal_equiv
        walls = w2[0].extra.get("walls") or []
        of = f" (the median of {len(walls)} runs: {', '.join(f'{w:.2f}' for w in walls)} s)" if len(walls) > 1 else ""
        out.append(f"wall time N={p.n_overhead}, C={p.conc_overhead}, {p.dur_overhead:g} s runs, no limit: "
                   f"{w2[0].wall:.2f} s{of} = {w2[0].wall / ideal:.2f}x ideal {ideal:g} s (target <= 1.1x: "
                   f"{ok[w2[0].wall <= 1.1 * ideal]}){_split(w2[0], ideal)}; "
                   f"runner CPU {w2[0].cpu_per_1000} s per 1000 runs, "
                   f"{1000 * (w2[0].cpu or 0.0) / max(1, w2[0].requests):.2f} ms per request at "
                   f"{p.conc_overhead} in flight")  # fmt: skip
    w6 = lam("6 ")
    if len(w6) == 2 and w6[0].peak_rss_mib and w6[1].peak_rss_mib:
        ratio = w6[1].peak_rss_mib / w6[0].peak_rss_mib
        out.append(f"peak RSS N={w6[0].n}: {w6[0].peak_rss_mib:.1f} MiB, N={w6[1].n}: {w6[1].peak_rss_mib:.1f} MiB "
                   f"= {ratio:.2f}x (target <= 1.5x: {ok[ratio <= 1.5]})")  # fmt: skip
    return out


def render(source: Path, out: Path) -> int:
    """Rewrite latest.md / README-section.md from measured rows; ideals and checks are recomputed from them."""
    meta, rows = load_results(source)
    saved: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["params"].items()}
    params = Params(**saved)
    meta["ideals"] = {k: v for k, v in ideals(params).items() if any(r.workload == k for r in rows)}
    meta["checks"] = checks(rows, params)
    write_results(out, meta, rows)
    print(markdown(meta, rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--scale", type=float, default=None, help="time compression for workloads 1, 3, 4, 5 (default 10)")
    ap.add_argument("--only", choices=WORKLOADS, action="append", help="run only this workload (repeatable)")
    ap.add_argument("--smoke", action="store_true", help="tiny version of everything, for CI; writes to a temp dir")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--render", type=Path, metavar="JSON", help="only re-render the Markdown from a latest.json")
    args = ap.parse_args(argv)
    if args.render is not None:
        return render(args.render, args.out or args.render.parent)
    params = SMOKE if args.smoke else Params()
    if args.scale is not None:
        params = replace(params, scale=args.scale)
    selected = args.only or list(WORKLOADS)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    precompile()
    with tempfile.TemporaryDirectory(prefix="lamina-bench-") as tmp:
        bench = Bench(params, Path(tmp), log)
        for name in WORKLOADS:
            if name in selected:
                log(f"workload {name} ...")
                getattr(bench, name)()
        meta: dict[str, Any] = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]),
            "machine": machine_info(),
            "scale": params.scale,
            "smoke": args.smoke,
            "params": asdict(params),
            "ideals": {k: v for k, v in ideals(params).items() if any(r.workload == k for r in bench.rows)},
            "checks": checks(bench.rows, params),
        }
        out = args.out or (Path(tmp) / "results" if args.smoke else HERE / "results")
        js, md = write_results(out, meta, bench.rows)
        print(markdown(meta, bench.rows))
        log(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
