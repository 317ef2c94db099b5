"""`BatchOptions`, the per-invocation choices of a batch (one field per `run` flag), and how they apply to a
pipeline: overrides of its `run:` block and the manifest a shard writes by default.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ConfigError, OptionError
from .models import FailureLimit, Pipeline, Rate

if TYPE_CHECKING:
    from .models import WebhookSettings
    from .selection import Selection

__all__ = [
    "BatchOptions",
    "PipelineSource",
    "apply_options",
    "download_timeout",
    "listen_address",
    "load_for",
    "output_dir_for",
    "prepare_pipeline",
    "shard_manifest_path",
]

T = TypeVar("T")

PipelineSource = Pipeline | str | os.PathLike[str]
"""A pipeline file's path, or a pipeline already loaded with `load_pipeline`."""


@dataclass(frozen=True)
class BatchOptions:
    """What `lamina-batch run` takes besides the pipeline. Each field is the flag of the same name
    (`max_starts` is `--max-starts`, `reports` is the repeatable `--report`); where the pipeline's `run:` block
    has the key, a value here overrides it and None keeps the pipeline's. Values may be written as on the
    command line ("90/min", "15m", "20%", "2/4", "127.0.0.1:8787") or already parsed; a bad one raises
    OptionError before any row is read or any request sent.

    A new `run` flag is a new field here with the flag's name: the CLI hands every flag to the field of the
    same name (`cli.common.batch_options`)."""

    manifest: str | os.PathLike[str] | None = None  # default: from the spec, else beside the pipeline
    output_dir: str | os.PathLike[str] | None = None  # where downloads go; default: the pipeline's folder
    concurrency: int | None = None
    rate_limit: str | Rate | None = None  # all API requests together; set, it is a hard cap
    poll_interval: float | str | None = None  # seconds
    timeout: float | str | None = None  # seconds per run
    retry_failed: bool = False  # start again runs that failed / were cancelled / timed out
    restart_unknown: bool = False  # start again runs whose outcome is unknown
    max_starts: int | None = None
    max_failures: str | int | FailureLimit | None = None  # a count (5) or a share of finished runs ("20%")
    shard: str | tuple[int, int] | None = None  # only the rows of shard I of N, 1-based
    webhook_url: str | None = None  # the public URL Lamina posts results to
    listen: str | tuple[str, int] | None = None  # where the webhook receiver binds
    emulator: bool = False  # run against a Lamina emulator started in-process (free, no API key)
    reports: Sequence[tuple[str, str | os.PathLike[str]]] = ()  # (format, path): written at the end of the run
    # SIGINT/SIGTERM stop new starts and record in-flight runs (a second one ends the process at once, with
    # 128 + the signal's number). Off by default: a library leaves the process's signals to its host.
    handle_signals: bool = False
    # the total time cap of one output download ("10m"; seconds as a number); None: 120 s plus the time its size
    # takes at 64 KiB/s. The gap between two bytes is capped separately (120 s).
    download_timeout: float | str | None = None
    allow_empty: bool = False  # a batch that plans nothing at all is an error (exit 2 on the CLI) unless this
    # never commit more credits than this in one invocation (expected estimate per run started); positive
    max_credits: float | str | None = None

    @property
    def manifest_given(self) -> bool:
        """True when `manifest` names the file: it is then used exactly as given (no shard/emulator suffix)."""
        return self.manifest is not None

    # `--redo rejected`: a new attempt for every completed run whose current attempt is rejected, and the runs
    # downstream of it (the only value; None: no redo)
    redo: str | None = None
    # `--redo-set NAME=TEMPLATE` (repeatable): inputs varied from attempt 2 on, over the spec's `review.vary`
    redo_set: Sequence[str] | Mapping[str, str] = ()

    @property
    def redo_rejected(self) -> bool:
        """`redo` checked: True for "rejected"; OptionError for anything else."""
        if self.redo is None:
            return False
        if self.redo != "rejected":
            raise OptionError("{0} " + _literal(repr(self.redo)) + ": the only redo is 'rejected'", "redo")
        return True

    @property
    def redo_templates(self) -> dict[str, str]:
        """`redo_set` as name -> template, each checked to compile; OptionError naming the bad one."""
        return redo_templates(self.redo_set)

    # a subset for a smoke run (`--rows 1-5,42`, `--limit N`): same identities as the full batch
    rows: str | None = None  # data-row numbers and ranges
    limit: int | None = None  # at most the first N items after `where` (and `rows`)

    @property
    def selection(self) -> Selection | None:
        """`rows`/`limit` as a Selection (None: the whole batch); OptionError naming the flag if malformed."""
        if self.rows is None and self.limit is None:
            return None
        from .selection import Selection

        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)):
            raise OptionError("{0} " + _literal(repr(self.limit)) + " must be a whole number", "limit")
        try:
            return Selection.parse(self.rows, self.limit)
        except ConfigError as e:
            problem = e.problems[0]
            name = "limit" if problem.path == "--limit" else "rows"
            reason = problem.message + (f" ({problem.hint})" if problem.hint else "")
            raise OptionError("{0}: " + _literal(reason), name) from None

    @property
    def shard_pair(self) -> tuple[int, int] | None:
        """`shard` as (i, n), checked; OptionError if malformed."""
        return None if self.shard is None else _shard(self.shard)


def prepare_pipeline(source: PipelineSource, options: BatchOptions) -> Pipeline:
    """The pipeline as `run` uses it: loaded, its manifest chosen, its `run:` block overridden, and every option
    checked (OptionError) before any row is read or any request sent."""
    pipeline = apply_options(load_for(source, options), options)
    _check_reports(options.reports)
    download_timeout(options)
    _ = options.redo_rejected, options.redo_templates  # refused before any row is read
    _ = options.selection  # a bad --rows/--limit is refused before any row is read
    return pipeline


def load_for(source: PipelineSource, options: BatchOptions) -> Pipeline:
    """The pipeline (loaded if a path) with the manifest `options` choose. A manifest named by `manifest` or by
    the spec's `manifest:` is used exactly as given; only the default name (`<stem>.lamina.sqlite`) gets the
    emulator's and a shard's suffix: `<stem>.emulator.shard-I-of-N.lamina.sqlite`."""
    from .spec import load_pipeline

    pipeline = source if isinstance(source, Pipeline) else load_pipeline(Path(source))
    if options.manifest_given:
        assert options.manifest is not None
        return dataclasses.replace(pipeline, manifest=Path(options.manifest).resolve())
    if pipeline.manifest != default_manifest(pipeline):
        return pipeline
    manifest = emulator_manifest_path(pipeline) if options.emulator else pipeline.manifest
    pipeline = dataclasses.replace(pipeline, manifest=manifest)
    return dataclasses.replace(pipeline, manifest=shard_manifest_path(pipeline, options.shard_pair))


def default_manifest(pipeline: Pipeline) -> Path:
    """The manifest a pipeline uses when neither its spec nor the options name one: `<stem>.lamina.sqlite`."""
    return pipeline.path.parent / f"{pipeline.path.stem}.lamina.sqlite"


def emulator_manifest_path(pipeline: Pipeline) -> Path:
    """`--emulator` runs keep their own manifest by default: `<stem>.emulator.lamina.sqlite`."""
    return _suffixed(pipeline.manifest, "emulator")


def output_dir_for(pipeline: Pipeline, options: BatchOptions) -> Path:
    """Where downloads go (absolute): `output_dir` as given, else the pipeline's folder; an `--emulator` run's
    default is `lamina-emulator/` inside it, so a try on the emulator never writes where a real run does."""
    if options.output_dir is not None:
        return Path(options.output_dir).resolve()
    base = pipeline.path.parent.resolve()
    return base / EMULATOR_OUTPUT_DIR if options.emulator else base


EMULATOR_OUTPUT_DIR = "lamina-emulator"


def shard_manifest_path(pipeline: Pipeline, shard: tuple[int, int] | None) -> Path:
    """Shards write their own manifest by default: `<stem>.shard-I-of-N.lamina.sqlite`."""
    if shard is None:
        return pipeline.manifest
    i, n = shard
    return _suffixed(pipeline.manifest, f"shard-{i}-of-{n}")


def _suffixed(path: Path, marker: str) -> Path:
    suffix = ".lamina.sqlite"
    name = path.name
    if name.endswith(suffix):
        return path.with_name(f"{name[: -len(suffix)]}.{marker}{suffix}")
    return path.with_name(f"{name}.{marker}")


def apply_options(pipeline: Pipeline, options: BatchOptions) -> Pipeline:
    """The pipeline with its `run:` block overridden by `options`; OptionError names the first bad value."""
    from .spec import parse_duration, parse_failure_limit, parse_rate

    changes: dict[str, Any] = {}
    if options.concurrency is not None:
        changes["concurrency"] = _at_least_one(options.concurrency, "concurrency")
    if options.rate_limit is not None:
        rate = options.rate_limit
        changes["rate_limit"] = rate if isinstance(rate, Rate) else _parsed(parse_rate, rate, "rate_limit", "90/min")
        changes["rate_limit_explicit"] = True
    for name in ("poll_interval", "timeout"):
        value = getattr(options, name)
        if value is not None:
            changes[name] = _parsed(parse_duration, value, name, "90, 90s, 15m, 2h")
    if options.max_starts is not None:
        changes["max_starts"] = _at_least_one(options.max_starts, "max_starts")
    if options.max_credits is not None:
        changes["max_credits"] = _positive_number(options.max_credits, "max_credits")
    limit = options.max_failures
    if limit is not None:
        changes["max_failures"] = (
            limit
            if isinstance(limit, FailureLimit)
            else _parsed(parse_failure_limit, limit, "max_failures", "10 or 20%")
        )
    webhook = _webhook(pipeline, options)
    if webhook is not None:
        changes["webhook"] = webhook
    if not changes:
        return pipeline
    return dataclasses.replace(pipeline, run=dataclasses.replace(pipeline.run, **changes))


def download_timeout(options: BatchOptions) -> float | None:
    """`download_timeout` in seconds (None: the size-scaled default); OptionError unless a positive duration."""
    from .spec import parse_duration

    value = options.download_timeout
    if value is None:
        return None
    seconds = _parsed(parse_duration, value, "download_timeout", "90s, 15m, 2h")
    if seconds <= 0:
        raise OptionError("{0} must be more than 0 seconds", "download_timeout")
    return seconds


def listen_address(listen: str | tuple[str, int]) -> tuple[str, int]:
    """(host, port) from "HOST:PORT" or a pair; OptionError otherwise."""
    if isinstance(listen, tuple):
        host, port = listen
        text = f"{host}:{port}"
    else:
        text = listen
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise OptionError("{0} " + _literal(repr(listen)) + " is not HOST:PORT (e.g. 127.0.0.1:8787)", "listen")
    return host, int(port_text)


def _webhook(pipeline: Pipeline, options: BatchOptions) -> WebhookSettings | None:
    from .models import WebhookSettings

    if options.webhook_url is None and options.listen is None:
        return None
    current = pipeline.run.webhook
    if options.webhook_url is None and current is None:
        raise OptionError("{0} needs {1} (the public URL that reaches the receiver)", "listen", "webhook_url")
    url = options.webhook_url or (current.url if current else "")
    if options.listen is not None:
        host, port = listen_address(options.listen)
        listen = f"{host}:{port}"
    else:
        listen = current.listen if current else "127.0.0.1:8787"
    if not url.startswith(("http://", "https://")):
        raise OptionError("{0} " + _literal(repr(url)) + " must be an http(s) URL", "webhook_url")
    return WebhookSettings(url=url, listen=listen)


def redo_templates(entries: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """`--redo-set NAME=TEMPLATE` entries as name -> template; OptionError for a missing `=`, an empty name or a
    template that does not compile."""
    from .templates import compile_template

    pairs: list[tuple[str, str]] = []
    if isinstance(entries, Mapping):
        pairs = [(str(k), str(v)) for k, v in entries.items()]
    else:
        for entry in entries:
            name, sep, template = str(entry).partition("=")
            if not sep or not name.strip():
                raise OptionError(
                    "{0} " + _literal(f"{entry!r} is not NAME=TEMPLATE (e.g. 'Seed={{{{ attempt }}}}')"), "redo_set"
                )
            pairs.append((name.strip(), template))
    for name, template in pairs:
        try:
            compile_template(template)
        except ConfigError as e:
            reason = str(e).splitlines()[0] if str(e) else "does not compile"
            raise OptionError("{0} " + _literal(f"{name}={template!r}: {reason}"), "redo_set") from None
    return dict(pairs)


def _check_reports(reports: Sequence[tuple[str, str | os.PathLike[str]]]) -> None:
    """An unknown report format is refused before the batch, not after it."""
    if not reports:
        return
    from .reports import FORMATS

    for fmt, _ in reports:
        if fmt not in FORMATS:
            raise OptionError(
                "{0} " + _literal(f"{fmt!r}: unknown report format (one of {', '.join(FORMATS)})"), "reports"
            )
        if fmt == "xlsx":  # without the excel extra, say so before the batch rather than after it
            from .reports.xlsx import require_writer

            require_writer()


def _shard(shard: str | tuple[int, int]) -> tuple[int, int]:
    if isinstance(shard, tuple):
        i, n = shard
    else:
        try:
            i_text, n_text = shard.split("/")
            i, n = int(i_text), int(n_text)
        except ValueError:
            raise OptionError("{0} " + _literal(repr(shard)) + " is not I/N (e.g. 2/4)", "shard") from None
    if not (n >= 1 and 1 <= i <= n):
        raise OptionError("{0} " + _literal(repr(shard)) + ": need 1 <= I <= N (e.g. 2/4)", "shard")
    return i, n


def _at_least_one(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError("{0} " + _literal(repr(value)) + " must be a whole number, 1 or more", name)
    return value


def _positive_number(value: object, name: str) -> float:
    """A positive, finite number of credits ("2000", 2000, 12.5); OptionError otherwise."""
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not 0 < number < float("inf"):
        raise OptionError("{0} " + _literal(repr(value)) + " must be a positive number of credits (e.g. 2000)", name)
    return number


def _parsed(parse: Callable[[object], T], value: object, name: str, example: str) -> T:
    """parse(value), or OptionError naming the option, the value, the parser's reason and an example."""
    try:
        return parse(value)
    except (ConfigError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OptionError("{0} " + _literal(f"{value!r}: {reason} (use e.g. {example})"), name) from None


def _literal(text: str) -> str:
    """`text` inside an OptionError template, where braces are placeholders."""
    return text.replace("{", "{{").replace("}", "}}")
