"""The `lamina-batch` command: argparse, every line printed, progress bars and exit codes.

Everything else lives in the library, which raises `errors.*` and emits `events.*`; this module only turns those
into text and the documented exit codes (README "Exit codes").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import difflib
import gc
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from lamina_batch import __version__
from lamina_batch.errors import (
    ApiError,
    AuthError,
    ConfigError,
    ForbiddenError,
    LaminaBatchError,
    ManifestError,
    ManifestLockedError,
    MissingApiKeyError,
    NotFoundError,
    Problem,
)
from lamina_batch.models import Dialect, Pipeline, RunState

if TYPE_CHECKING:  # imported where used: `lamina-batch --help` should not pay for jinja2
    from lamina_batch.matrix import InputDigest

EXIT_OK = 0
EXIT_FAILED_RUNS = 1
EXIT_CONFIG = 2
EXIT_STOPPED = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

COMMANDS = ("run", "validate", "plan", "status", "report", "cancel", "merge", "apps", "init", "emulator")
REPORT_FORMATS = ("csv", "jsonl", "junit", "html", "markdown")


class UsageError(Exception):
    """A command-line mistake found after argparse (bad flag value); exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and did-you-mean for misspelt commands and choices."""

    def error(self, message: str) -> NoReturn:
        if "invalid choice" in message:
            bad = message.split("invalid choice: ", 1)[1].split(" ", 1)[0].strip("'")
            choices = [c for c in COMMANDS if c != bad]
            near = difflib.get_close_matches(bad, choices, n=1)
            if near:
                message += f" (did you mean '{near[0]}'?)"
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n{self.prog}: try '{self.prog} --help'\n")


# --------------------------------------------------------------------------- output helpers


class Out:
    """All printing goes through here so --quiet and stream choice live in one place."""

    def __init__(self, *, quiet: bool = False, verbose: bool = False) -> None:
        self.quiet = quiet
        self.verbose = verbose

    def info(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def result(self, text: str) -> None:
        print(text, flush=True)

    def err(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def _problems(out: Out, exc: ConfigError) -> None:
    for p in exc.problems:
        out.err(str(p))


# --------------------------------------------------------------------------- argument parsing


def _duration_flag(text: str) -> float:
    from lamina_batch.spec import parse_duration

    try:
        return parse_duration(text)
    except (ConfigError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (use e.g. 90, 90s, 15m, 2h): {e}") from None


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return n


def _shard(text: str) -> tuple[int, int]:
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N (e.g. 2/4)") from None
    if not (n >= 1 and 1 <= i <= n):
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= I <= N (e.g. 2/4)")
    return i, n


def _report_spec(text: str) -> tuple[str, Path]:
    fmt, sep, path = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not FORMAT=PATH (e.g. html=out/gallery.html)")
    if fmt not in REPORT_FORMATS:
        near = difflib.get_close_matches(fmt, REPORT_FORMATS, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else f" (one of {', '.join(REPORT_FORMATS)})"
        raise argparse.ArgumentTypeError(f"unknown report format {fmt!r}{hint}")
    return fmt, Path(path)


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8787)")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and debug detail")
    common.add_argument("-q", "--quiet", action="store_true", help="only errors and the final line")

    p = _Parser(
        prog="lamina-batch",
        description="Run Lamina apps over a spreadsheet, safely. `lamina-batch PIPELINE` is `run PIPELINE`.",
        parents=[common],
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def pipeline_cmd(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, parents=[common], description=help_)
        sp.add_argument("pipeline", type=Path, metavar="PIPELINE", help="the pipeline YAML file")
        return sp

    def emulator_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--emulator",
            action="store_true",
            help="talk to a built-in Lamina emulator started in-process (free; no API key needed)",
        )

    r = pipeline_cmd("run", "plan, start, poll, download and checkpoint; resumes if the manifest exists")
    r.add_argument("--manifest", type=Path, help="manifest file (default: from the spec, else beside it)")
    r.add_argument("--concurrency", type=_positive_int, help="max runs in flight")
    r.add_argument("--rate-limit", metavar="RATE", help="API requests for all runs together, e.g. 90/min")
    r.add_argument("--poll-interval", type=_duration_flag, metavar="DURATION")
    r.add_argument("--timeout", type=_duration_flag, metavar="DURATION", help="per run")
    r.add_argument("--retry-failed", action="store_true", help="start again runs that failed/cancelled/timed out")
    r.add_argument("--restart-unknown", action="store_true", help="start again runs whose outcome is unknown")
    r.add_argument("--max-starts", type=_positive_int, metavar="N", help="start at most N new runs now")
    r.add_argument("--max-failures", metavar="N|P%", help="stop starting past this count or share of failures")
    r.add_argument("--shard", type=_shard, metavar="I/N", help="only the rows of shard I of N")
    r.add_argument("--webhook-url", metavar="URL", help="public URL Lamina posts results to")
    r.add_argument("--listen", type=_listen, metavar="HOST:PORT", help="where the webhook receiver binds")
    r.add_argument("--output-dir", type=Path, help="where downloads go (default: the pipeline's folder)")
    r.add_argument(
        "--report",
        type=_report_spec,
        action="append",
        default=[],
        metavar="FORMAT=PATH",
        help=f"write a report at the end (repeatable); FORMAT is one of {', '.join(REPORT_FORMATS)}",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bars or summary lines")
    emulator_flag(r)

    v = pipeline_cmd("validate", "check spec, CSV and every template for every row; nothing is sent")
    v.add_argument("--check-apps", action="store_true", help="also check inputs against the live app definitions")
    emulator_flag(v)

    pl = pipeline_cmd("plan", "what `run` would do: new / reused / running / to retry / orphaned")
    pl.add_argument("--json", action="store_true", help="every run with its identity and rendered inputs")
    pl.add_argument("--manifest", type=Path)
    pl.add_argument("--retry-failed", action="store_true")
    pl.add_argument("--restart-unknown", action="store_true")
    pl.add_argument("--shard", type=_shard, metavar="I/N")

    st = pipeline_cmd("status", "counts by state per step and every failure; safe while a run is going")
    st.add_argument("--manifest", type=Path)
    st.add_argument("--shard", type=_shard, metavar="I/N")

    rp = pipeline_cmd("report", "write results from the manifest")
    rp.add_argument("--format", "-f", required=True, choices=REPORT_FORMATS)
    rp.add_argument("-o", "--output", required=True, type=Path, metavar="PATH")
    rp.add_argument("--manifest", type=Path)

    c = pipeline_cmd("cancel", "cancel remote runs this manifest still has running")
    c.add_argument("--manifest", type=Path)
    emulator_flag(c)

    m = sub.add_parser("merge", help="combine shard manifests", parents=[common])
    m.add_argument("sources", nargs="+", type=Path, metavar="MANIFEST")
    m.add_argument("-o", "--output", required=True, type=Path, metavar="ALL.sqlite")

    a = sub.add_parser("apps", help="discover apps", parents=[common])
    asub = a.add_subparsers(dest="apps_command", metavar="list|show", required=True, parser_class=_Parser)
    al = asub.add_parser("list", help="list apps", parents=[common])
    al.add_argument("--search", metavar="Q")
    al.add_argument("--json", action="store_true")
    al.add_argument("--api", choices=("runs", "executions"), default="runs")
    emulator_flag(al)
    ash = asub.add_parser("show", help="an app's parameters and outputs", parents=[common])
    ash.add_argument("app_id", metavar="APP_ID")
    ash.add_argument("--json", action="store_true")
    ash.add_argument("--api", choices=("runs", "executions"), default="runs")
    emulator_flag(ash)

    i = sub.add_parser("init", help="scaffold a pipeline from an app's parameters", parents=[common])
    i.add_argument("app_id", metavar="APP_ID")
    i.add_argument("--csv", type=Path, metavar="FILE", help="map parameters to this CSV's columns")
    i.add_argument("-o", "--output", type=Path, default=Path("pipeline.yaml"))
    i.add_argument("--force", action="store_true", help="overwrite an existing output file")
    i.add_argument("--api", choices=("runs", "executions"), default="runs")
    emulator_flag(i)

    e = sub.add_parser("emulator", help="serve a local Lamina-compatible API", parents=[common])
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=0, help="0 picks a free port")
    e.add_argument("--key", default="lma_emulator", help="the API key it accepts")
    e.add_argument("--config", type=Path, metavar="FILE", help="catalogue, durations, rate limit, faults (YAML)")
    e.add_argument("--seed", type=int, default=0)
    return p


def _normalise_argv(argv: list[str]) -> list[str]:
    """`lamina-batch PIPELINE [flags]` means `run PIPELINE [flags]`."""
    for i, a in enumerate(argv):
        if a in ("-h", "--help", "--version"):
            return argv
        if a.startswith("-"):
            continue
        if a not in COMMANDS and (a.endswith((".yaml", ".yml")) or Path(a).is_file()):
            return [*argv[:i], "run", *argv[i:]]
        return argv
    return argv


# --------------------------------------------------------------------------- entry point


def console() -> int:
    """The `lamina-batch` command and `python -m lamina_batch`: `main()` in a process of its own."""
    # Start-up builds only long-lived objects (modules, the schema, compiled templates) and no garbage
    # cycles: collecting while it runs is ~30 ms of wasted work at every start. main() turns the collector back
    # on before any command's real work (cmd_run: just before the batch, with those objects frozen).
    gc.disable()
    code = main(own_process=True)
    # Everything left is freed with the process: skip the interpreter's final full garbage collection
    # (~0.08 s after a 2000-run batch, measured).
    gc.freeze()
    return code


def main(argv: Sequence[str] | None = None, *, own_process: bool = False) -> int:
    """Run the CLI; return the exit code (never raises, never prints a traceback unless --verbose).
    `own_process`: the process is ours alone (console()), so process-wide tuning (the GC) is allowed."""
    args_list = _normalise_argv(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else EXIT_CONFIG
    if not args.command:
        parser.print_usage(sys.stderr)
        return EXIT_CONFIG
    args.own_process = own_process
    if own_process and args.command != "run":
        gc.enable()
    out = Out(quiet=getattr(args, "quiet", False), verbose=getattr(args, "verbose", False))
    handler: Callable[[argparse.Namespace, Out], int] = HANDLERS[args.command]
    try:
        return handler(args, out)
    except ConfigError as e:
        _problems(out, e)
        return EXIT_CONFIG
    except UsageError as e:
        out.err(f"lamina-batch: error: {e}")
        return EXIT_CONFIG
    except ManifestLockedError as e:
        out.err(f"lamina-batch: {e}")
        return EXIT_STOPPED
    except ManifestError as e:
        out.err(f"lamina-batch: {e}")
        return EXIT_CONFIG
    except (AuthError, ForbiddenError) as e:
        out.err(f"lamina-batch: {e}: check LAMINA_API_KEY (and LAMINA_BASE_URL)")
        return EXIT_CONFIG
    except NotFoundError as e:
        out.err(f"lamina-batch: {e}")
        return EXIT_CONFIG
    except ApiError as e:
        out.err(f"lamina-batch: Lamina API error: {e}")
        return EXIT_FAILED_RUNS
    except LaminaBatchError as e:
        out.err(f"lamina-batch: {e}")
        return EXIT_FAILED_RUNS
    except KeyboardInterrupt:
        out.err("lamina-batch: interrupted")
        return EXIT_SIGINT
    except Exception as e:  # the last line of defence: one line, never a traceback unless asked
        if out.verbose:
            traceback.print_exc()
        out.err(f"lamina-batch: internal error: {type(e).__name__}: {e} (run with --verbose for the traceback)")
        return EXIT_FAILED_RUNS


# --------------------------------------------------------------------------- shared command plumbing


def _load(path: Path, *, manifest: Path | None = None) -> Pipeline:
    from lamina_batch.spec import load_pipeline

    pipeline = load_pipeline(path)
    if manifest is not None:
        pipeline = dataclasses.replace(pipeline, manifest=manifest.resolve())
    return pipeline


def _manifest_path(pipeline: Pipeline, shard: tuple[int, int] | None) -> Path:
    """Shards write their own manifest by default: `<stem>.shard-I-of-N.lamina.sqlite`."""
    if shard is None:
        return pipeline.manifest
    name = pipeline.manifest.name
    i, n = shard
    suffix = ".lamina.sqlite"
    if name.endswith(suffix):
        return pipeline.manifest.with_name(f"{name[: -len(suffix)]}.shard-{i}-of-{n}{suffix}")
    return pipeline.manifest.with_name(f"{name}.shard-{i}-of-{n}")


def _apply_flags(pipeline: Pipeline, args: argparse.Namespace) -> Pipeline:
    from lamina_batch.models import WebhookSettings
    from lamina_batch.spec import parse_failure_limit, parse_rate

    run = pipeline.run
    changes: dict[str, Any] = {}
    if args.concurrency is not None:
        changes["concurrency"] = args.concurrency
    if args.rate_limit is not None:
        try:
            changes["rate_limit"] = parse_rate(args.rate_limit)
            changes["rate_limit_explicit"] = True
        except (ConfigError, ValueError) as e:
            raise UsageError(f"--rate-limit {args.rate_limit!r}: {_first_line(e)} (use e.g. 90/min)") from None
    if args.poll_interval is not None:
        changes["poll_interval"] = args.poll_interval
    if args.timeout is not None:
        changes["timeout"] = args.timeout
    if args.max_starts is not None:
        changes["max_starts"] = args.max_starts
    if args.max_failures is not None:
        try:
            changes["max_failures"] = parse_failure_limit(args.max_failures)
        except (ConfigError, ValueError) as e:
            raise UsageError(f"--max-failures {args.max_failures!r}: {_first_line(e)} (use e.g. 10 or 20%)") from None
    if args.webhook_url is not None or args.listen is not None:
        if args.webhook_url is None and run.webhook is None:
            raise UsageError("--listen needs --webhook-url (the public URL that reaches the receiver)")
        url = args.webhook_url or (run.webhook.url if run.webhook else "")
        listen = (
            f"{args.listen[0]}:{args.listen[1]}"
            if args.listen
            else (run.webhook.listen if run.webhook else "127.0.0.1:8787")
        )
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--webhook-url {url!r} must be an http(s) URL")
        changes["webhook"] = WebhookSettings(url=url, listen=listen)
    return dataclasses.replace(pipeline, run=dataclasses.replace(run, **changes)) if changes else pipeline


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


@contextlib.contextmanager
def _api_target(emulator: bool) -> Iterator[tuple[str, str]]:
    """(base_url, key): the in-process emulator's, or the environment's (MissingApiKeyError if unset)."""
    if emulator:
        from lamina_batch.emulator import Emulator, EmulatorConfig

        # Lamina's real 100/min limit, but short runs: a first try should take seconds, not minutes.
        with Emulator(EmulatorConfig(duration=(1.0, 3.0), seed=0)) as emu:
            yield emu.base_url, emu.key
        return
    key = os.environ.get("LAMINA_API_KEY", "").strip()
    if not key:
        raise MissingApiKeyError(
            Problem("LAMINA_API_KEY is not set: export your Lamina API key (lma_...), or add --emulator to try it free")
        )
    yield os.environ.get("LAMINA_BASE_URL", "https://app.uselamina.ai").rstrip("/"), key


def _client(base_url: str, key: str, dialect: Dialect, pipeline: Pipeline | None = None) -> Any:
    from lamina_batch.client import LaminaClient

    if pipeline is not None:
        # every run in flight holds a connection during /wait; leave room for starts and downloads
        connections = max(128, pipeline.run.concurrency + 16)
        return LaminaClient(
            base_url,
            key,
            dialect=dialect,
            rate=pipeline.run.rate_limit,
            rate_cap=pipeline.run.rate_limit_explicit,
            max_connections=connections,
        )
    return LaminaClient(base_url, key, dialect=dialect)


# --------------------------------------------------------------------------- validate / plan


def cmd_validate(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.matrix import InputDigest, expand_runs, validate_pipeline

    pipeline = _load(args.pipeline)
    digest = InputDigest() if args.check_apps else None
    summary = validate_pipeline(pipeline, digest=digest)
    if args.check_apps:
        from lamina_batch.preflight import check_apps

        with _api_target(args.emulator) as (base_url, key):

            async def go() -> list[Problem]:
                async with _client(base_url, key, pipeline.api, pipeline) as client:
                    return await check_apps(pipeline, client, expand_runs(pipeline), digest=digest)

            problems = asyncio.run(go())
        if problems:
            raise ConfigError(problems)
    apps = " (apps checked)" if args.check_apps else ""
    out.result(
        f"{args.pipeline}: valid{apps}: {summary.rows} rows, {summary.items} items, "
        f"{summary.steps} steps, {summary.runs} runs"
    )
    return EXIT_OK


def _all_problems(pipeline: Pipeline, first: ConfigError) -> ConfigError:
    """A single pass stops at the first bad row; on failure, a full validation pass lists every problem."""
    from lamina_batch.matrix import validate_pipeline

    try:
        validate_pipeline(pipeline)
    except ConfigError as every:
        return every
    return first


def cmd_plan(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.manifest import Manifest
    from lamina_batch.planner import plan_against_manifest

    pipeline = _load(args.pipeline, manifest=args.manifest)
    mpath = _manifest_path(pipeline, args.shard)
    manifest = Manifest.open(mpath, pipeline_name=pipeline.name, writer=False) if mpath.exists() else None
    try:
        report = plan_against_manifest(
            pipeline,
            manifest,
            retry_failed=args.retry_failed,
            restart_unknown=args.restart_unknown,
            shard=args.shard,
            details=args.json,
        )
    except ConfigError as e:
        raise _all_problems(pipeline, e) from None
    finally:
        if manifest is not None:
            manifest.close()
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return EXIT_OK
    out.result(report.render_text())
    return EXIT_OK


# --------------------------------------------------------------------------- run


class Progress:
    """Renders executor events: tqdm bars per step on a terminal, a summary line every ~10 s elsewhere."""

    def __init__(self, out: Out, pipeline: Pipeline, totals: dict[str, int], *, enabled: bool) -> None:
        self.out = out
        self.enabled = enabled and not out.quiet
        self.tty = sys.stderr.isatty()
        self.totals = totals
        self.done: dict[str, dict[str, int]] = {s.id: {} for s in pipeline.steps}
        self.bars: dict[str, Any] = {}
        self.last_line = time.monotonic()
        self.started = time.monotonic()
        if self.enabled and self.tty:
            from tqdm import tqdm

            width = max(len(s.id) for s in pipeline.steps)
            for pos, s in enumerate(pipeline.steps):
                self.bars[s.id] = tqdm(
                    total=totals.get(s.id, 0),
                    desc=s.id.ljust(width),
                    position=pos,
                    unit="run",
                    dynamic_ncols=True,
                    file=sys.stderr,
                    leave=True,
                )

    def __call__(self, event: Any) -> None:
        from lamina_batch import events as ev

        if isinstance(event, ev.Notice):
            if self.bars:
                from tqdm import tqdm

                tqdm.write(event.message, file=sys.stderr)
            elif not self.out.quiet:
                self.out.err(event.message)
            return
        step = getattr(event, "step_id", None)
        if isinstance(event, ev.RunFinished | ev.RunReused) and step in self.done:
            state = str(getattr(event, "state", RunState.COMPLETED))
            counts = self.done[step]
            counts[state] = counts.get(state, 0) + 1
            bar = self.bars.get(step)
            if bar is not None:
                bar.update(1)
                bad = sum(v for k, v in counts.items() if k != RunState.COMPLETED)
                bar.set_postfix_str(f"ok {counts.get(RunState.COMPLETED, 0)} bad {bad}", refresh=False)
        self.tick()

    def tick(self, *, force: bool = False) -> None:
        if not self.enabled or self.bars:
            return
        now = time.monotonic()
        if force or now - self.last_line >= 10.0:
            self.last_line = now
            self.out.err(f"[{now - self.started:6.0f}s] {self.summary()}")

    def summary(self) -> str:
        parts = []
        for step, counts in self.done.items():
            ok = counts.get(RunState.COMPLETED, 0)
            bad = sum(v for k, v in counts.items() if k != RunState.COMPLETED)
            parts.append(f"{step} {ok + bad}/{self.totals.get(step, 0)} done ({bad} bad)")
        return "; ".join(parts)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def cmd_run(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.matrix import InputDigest, validate_pipeline

    pipeline = _apply_flags(_load(args.pipeline, manifest=args.manifest), args)
    pipeline = dataclasses.replace(pipeline, manifest=_manifest_path(pipeline, args.shard))
    digest = InputDigest()
    validate_pipeline(pipeline, digest=digest, shard=args.shard)  # every template for every row, no request yet
    with _api_target(args.emulator) as (base_url, key):
        return asyncio.run(_run_async(pipeline, args, out, base_url, key, digest))


async def _run_async(
    pipeline: Pipeline, args: argparse.Namespace, out: Out, base_url: str, key: str, digest: InputDigest
) -> int:
    from lamina_batch.downloads import Downloader
    from lamina_batch.executor import ExecOptions, Executor, StopReason
    from lamina_batch.manifest import Manifest
    from lamina_batch.matrix import expand_runs
    from lamina_batch.preflight import check_apps

    async with _client(base_url, key, pipeline.api, pipeline) as client:
        totals = {s.id: digest.totals.get(s.id, 0) for s in pipeline.steps}
        problems = await check_apps(pipeline, client, expand_runs(pipeline, shard=args.shard), digest=digest)
        if problems:
            raise ConfigError(problems)
        listen = None
        if pipeline.run.webhook is not None:
            host, _, port = pipeline.run.webhook.listen.rpartition(":")
            listen = (host, int(port))
        options = ExecOptions(
            retry_failed=args.retry_failed,
            restart_unknown=args.restart_unknown,
            shard=args.shard,
            webhook_url=pipeline.run.webhook.url if pipeline.run.webhook else None,
            listen=listen,
        )
        output_dir = (args.output_dir or pipeline.path.parent).resolve()
        with Manifest.open(pipeline.manifest, pipeline_name=pipeline.name, writer=True) as manifest:
            progress = Progress(out, pipeline, totals, enabled=not args.no_progress)
            downloader = Downloader(output_dir) if pipeline.download is not None else None
            executor = Executor(pipeline, manifest, client, options, emit=progress, downloader=downloader)
            loop = asyncio.get_running_loop()
            signals_seen: list[int] = []

            def on_signal(signum: int) -> None:
                if signals_seen:
                    os._exit(EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM)
                signals_seen.append(signum)
                out.err(
                    f"lamina-batch: {signal.Signals(signum).name}: stopping new starts, recording in-flight "
                    "runs (press again to exit at once)"
                )
                executor.request_stop(StopReason.SIGINT if signum == signal.SIGINT else StopReason.SIGTERM)

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal, sig)
            if getattr(args, "own_process", False):
                # What exists now (modules, schema, compiled templates) lives as long as the process: keep it
                # out of the collector's full passes, which otherwise stalled a 2000-run batch ~40 ms each.
                gc.freeze()
                gc.enable()
            try:
                result = await executor.run()
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
                progress.close()
                if downloader is not None:
                    await downloader.aclose()
            _write_reports(pipeline, manifest, args.report, output_dir, out)
    return _finish_run(result, pipeline, out)


def _finish_run(result: Any, pipeline: Pipeline, out: Out) -> int:
    from lamina_batch.executor import StopReason

    counts = {str(k): v for k, v in result.counts.items() if v}
    total = sum(counts.values()) + result.not_started
    parts = [f"{v} {k}" for k, v in sorted(counts.items())]
    if result.not_started:
        parts.append(f"{result.not_started} not started")
    line = f"{pipeline.name}: {total} runs: {', '.join(parts) or 'nothing to do'}; {result.starts} started now"
    if result.download_failures:
        line += f"; {result.download_failures} downloads failed"
    reason = result.stop_reason
    if reason is StopReason.SIGINT:
        out.err(f"{line}. Interrupted: run the same command again to resume.")
        return EXIT_SIGINT
    if reason is StopReason.SIGTERM:
        out.err(f"{line}. Terminated: run the same command again to resume.")
        return EXIT_SIGTERM
    if reason in (StopReason.MAX_FAILURES, StopReason.MAX_STARTS, StopReason.FATAL):
        why = result.message or reason.name.lower()
        if result.fatal_error is not None:
            why = f"{result.fatal_error}"
        out.err(f"{line}. Stopped early: {why}. Fix it and run the same command again to resume.")
        return EXIT_STOPPED
    bad = sum(v for k, v in result.counts.items() if RunState(k).bad)
    if bad or result.not_started or result.download_failures:
        out.err(f"{line}. Some runs did not complete: `lamina-batch status {pipeline.path}` lists them.")
        return EXIT_FAILED_RUNS
    out.result(line)
    return EXIT_OK


# --------------------------------------------------------------------------- status / report / cancel / merge


def cmd_status(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.manifest import Manifest
    from lamina_batch.planner import status_report

    pipeline = _load(args.pipeline, manifest=args.manifest)
    mpath = _manifest_path(pipeline, args.shard)
    if not mpath.exists():
        raise ManifestError(f"{mpath}: no manifest yet; start the batch with `lamina-batch run {args.pipeline}`")
    with Manifest.open(mpath, pipeline_name=pipeline.name, writer=False) as manifest:
        report = status_report(pipeline, manifest, shard=args.shard)
    out.result(report.render_text())
    if report.all_completed:
        return EXIT_OK
    if report.any_unfinished:
        return EXIT_STOPPED
    return EXIT_FAILED_RUNS


def _write_reports(
    pipeline: Pipeline, manifest: Any, reports: list[tuple[str, Path]], output_dir: Path, out: Out
) -> None:
    if not reports:
        return
    from lamina_batch.reports import ReportInput, append_github_summary, render_markdown, write_report

    for fmt, path in reports:
        data = ReportInput(
            pipeline_name=pipeline.name,
            step_ids=[s.id for s in pipeline.steps],
            records=manifest.iter_runs(),
            base_dir=output_dir,
        )
        write_report(fmt, data, path)
        out.info(f"wrote {fmt} report to {path}")
        if fmt == "markdown" and os.environ.get("GITHUB_STEP_SUMMARY"):
            append_github_summary(render_markdown(dataclasses.replace(data, records=manifest.iter_runs())), os.environ)


def cmd_report(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.manifest import Manifest

    pipeline = _load(args.pipeline, manifest=args.manifest)
    if not pipeline.manifest.exists():
        raise ManifestError(
            f"{pipeline.manifest}: no manifest yet; start the batch with `lamina-batch run {args.pipeline}`"
        )
    with Manifest.open(pipeline.manifest, pipeline_name=pipeline.name, writer=False) as manifest:
        _write_reports(pipeline, manifest, [(args.format, args.output)], pipeline.path.parent.resolve(), out)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.manifest import Manifest
    from lamina_batch.planner import cancel_running

    pipeline = _load(args.pipeline, manifest=args.manifest)
    if not pipeline.manifest.exists():
        raise ManifestError(f"{pipeline.manifest}: no manifest, so nothing to cancel")
    with _api_target(args.emulator) as (base_url, key):

        async def go() -> list[tuple[str, str]]:
            async with _client(base_url, key, pipeline.api, pipeline) as client:
                with Manifest.open(pipeline.manifest, pipeline_name=pipeline.name, writer=True) as manifest:
                    return await cancel_running(pipeline, manifest, client)

        outcomes = asyncio.run(go())
    for identity, outcome in outcomes:
        out.info(f"{identity[:12]}: {outcome}")
    out.result(f"{pipeline.name}: {len(outcomes)} running runs handled")
    return EXIT_OK


def cmd_merge(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.manifest import merge_manifests

    for src in args.sources:
        if not src.exists():
            raise UsageError(f"{src}: no such manifest")
    summary = merge_manifests(args.sources, args.output)
    out.result(f"merged {len(args.sources)} manifests into {args.output}: {summary.runs} runs")
    return EXIT_OK


# --------------------------------------------------------------------------- apps / init / emulator


def _fmt_param(p: Any) -> list[str]:
    need = "required" if not p.has_default else f"default {json.dumps(p.default)}"
    extra = ""
    if p.options:
        extra = "options: " + ", ".join(p.options)
    elif p.accept:
        extra = "accepts: " + ", ".join(p.accept)
    return [p.name, p.type, need, extra]


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_apps(args: argparse.Namespace, out: Out) -> int:
    with _api_target(args.emulator) as (base_url, key):

        async def go() -> Any:
            async with _client(base_url, key, args.api) as client:
                if args.apps_command == "list":
                    return await client.list_apps(search=args.search)
                return await client.get_app(args.app_id)

        result = asyncio.run(go())
    if args.apps_command == "list":
        if args.json:
            out.result(json.dumps([dataclasses.asdict(a) for a in result], indent=2))
        else:
            rows = [[a.app_id, a.name, (a.description or "")[:60]] for a in result]
            out.result(_table(rows, ["APP ID", "NAME", "DESCRIPTION"]) if rows else "no apps found")
        return EXIT_OK
    app = result
    if args.json:
        out.result(json.dumps(dataclasses.asdict(app), indent=2))
        return EXIT_OK
    out.result(f"{app.app_id}  {app.name}")
    if app.description:
        out.result(app.description)
    out.result("")
    out.result(_table([_fmt_param(p) for p in app.parameters], ["PARAMETER", "TYPE", "REQUIRED/DEFAULT", "VALUES"]))
    out.result("")
    out.result(_table([[str(o.index), o.label, o.type] for o in app.outputs], ["#", "OUTPUT", "TYPE"]))
    return EXIT_OK


def cmd_init(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.atomic import write_text_atomic
    from lamina_batch.matrix import read_csv_header
    from lamina_batch.scaffold import init_pipeline_yaml

    if args.output.exists() and not args.force:
        raise UsageError(f"{args.output} exists; pass --force to overwrite or -o to choose another file")
    columns = read_csv_header(args.csv) if args.csv is not None else None
    with _api_target(args.emulator) as (base_url, key):

        async def go() -> Any:
            async with _client(base_url, key, args.api) as client:
                return await client.get_app(args.app_id)

        app = asyncio.run(go())
    csv_rel = None
    if args.csv is not None:
        csv_rel = Path(os.path.relpath(args.csv.resolve(), args.output.resolve().parent))
    text = init_pipeline_yaml(app, csv_path=csv_rel, csv_columns=columns, dialect=args.api)
    write_text_atomic(args.output, text)
    out.result(f"wrote {args.output}; check it with: lamina-batch validate {args.output}")
    return EXIT_OK


def cmd_emulator(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.emulator import EmulatorConfig, serve_forever

    try:
        config = EmulatorConfig.from_yaml(args.config) if args.config else EmulatorConfig()
    except (OSError, ValueError) as e:
        raise UsageError(f"--config {args.config}: {_first_line(e)}") from None
    config = dataclasses.replace(config, host=args.host, port=args.port, key=args.key, seed=args.seed)

    def announce(line: str) -> None:
        out.result(line)

    with contextlib.suppress(KeyboardInterrupt):
        serve_forever(config, announce)
    return EXIT_OK


HANDLERS: dict[str, Callable[[argparse.Namespace, Out], int]] = {
    "run": cmd_run,
    "validate": cmd_validate,
    "plan": cmd_plan,
    "status": cmd_status,
    "report": cmd_report,
    "cancel": cmd_cancel,
    "merge": cmd_merge,
    "apps": cmd_apps,
    "init": cmd_init,
    "emulator": cmd_emulator,
}
