"""The argparse side of the CLI: one-line errors with did-you-mean, the flag types, and the parser, built from the
command groups: each group module's `register(commands)` adds its commands through `Commands`.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn, Protocol

from lamina_batch import __version__
from lamina_batch.cli.common import EXIT_CONFIG, Handler

REPORT_FORMATS = ("csv", "jsonl", "junit", "html", "markdown", "xlsx")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, exit 2, and did-you-mean for a misspelt command or choice."""

    commands: tuple[str, ...] = ()  # the root parser's commands, for `normalise_argv`

    def error(self, message: str) -> NoReturn:
        if "invalid choice: " in message:
            bad, choices = _invalid_choice(message)
            near = difflib.get_close_matches(bad, [c for c in choices if c != bad], n=1)
            if near:
                message += f" (did you mean '{near[0]}'?)"
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n{self.prog}: try '{self.prog} --help'\n")


def _invalid_choice(message: str) -> tuple[str, list[str]]:
    """(the value, the choices) of argparse's "invalid choice: 'x' (choose from 'a', 'b')" (quoted or not)."""
    rest = message.split("invalid choice: ", 1)[1]
    bad, _, listed = rest.partition(" (choose from ")
    choices = [c.strip().strip("'") for c in listed.rstrip(")").split(",")] if listed else []
    return bad.strip("'"), choices


class Group(Protocol):
    """A command group module (`cli/run.py`, ...): `register` adds its commands."""

    def register(self, commands: Commands) -> None: ...


class Commands:
    """Where a group adds commands: `add(name, help, handler)` gives the command's parser (with --verbose and
    --quiet, and the PIPELINE argument when `pipeline`), ready for its own flags."""

    def __init__(self, sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
        self._sub = sub
        self._common = common

    def add(self, name: str, help_: str, handler: Handler, *, pipeline: bool = False) -> argparse.ArgumentParser:
        description = help_ if pipeline else None
        parser = self._sub.add_parser(name, help=help_, parents=[self._common], description=description)
        if pipeline:
            parser.add_argument("pipeline", type=Path, metavar="PIPELINE", help="the pipeline YAML file")
        parser.set_defaults(handler=handler)
        return parser

    def group(self, name: str, help_: str, *, dest: str, metavar: str) -> Commands:
        """A command with subcommands of its own (`apps list`, `apps show`), each added with `add`."""
        parser = self._sub.add_parser(name, help=help_, parents=[self._common])
        sub = parser.add_subparsers(dest=dest, metavar=metavar, required=True, parser_class=Parser)
        return Commands(sub, self._common)


def build_parser(groups: Iterable[Group]) -> Parser:
    """The `lamina-batch` parser with every group's commands, in the order given."""
    common = Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and debug detail")
    common.add_argument("-q", "--quiet", action="store_true", help="only errors and the final line")

    root = Parser(
        prog="lamina-batch",
        description="Run Lamina apps over a spreadsheet, safely. `lamina-batch PIPELINE` is `run PIPELINE`.",
        parents=[common],
    )
    root.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = root.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands = Commands(sub, common)
    for group in groups:
        group.register(commands)
    root.commands = tuple(sub.choices)
    return root


def normalise_argv(argv: list[str], commands: Sequence[str]) -> list[str]:
    """`lamina-batch PIPELINE [flags]` means `run PIPELINE [flags]`."""
    for i, a in enumerate(argv):
        if a in ("-h", "--help", "--version"):
            return argv
        if a.startswith("-"):
            continue
        if a not in commands and (a.endswith((".yaml", ".yml")) or Path(a).is_file()):
            return [*argv[:i], "run", *argv[i:]]
        return argv
    return argv


# --------------------------------------------------------------------------- flag types


def add_emulator_flag(parser: argparse.ArgumentParser, *, manifest_only: bool = False) -> None:
    """`--emulator`; `manifest_only` for commands that send nothing: it picks the emulator's own manifest."""
    help_ = (
        "the --emulator run's own manifest (and download folder)"
        if manifest_only
        else "talk to a built-in Lamina emulator started in-process (free; no API key needed)"
    )
    parser.add_argument("--emulator", action="store_true", help=help_)


def add_redo_flags(parser: argparse.ArgumentParser) -> None:
    """`--redo rejected` and `--redo-set NAME=TEMPLATE` (run and plan)."""
    parser.add_argument(
        "--redo",
        choices=["rejected"],
        help="a new attempt for every run whose current attempt is rejected (review), and the runs downstream of it",
    )
    parser.add_argument(
        "--redo-set",
        dest="redo_set",
        action="append",
        default=[],
        metavar="NAME=TEMPLATE",
        help="vary an input from attempt 2 on, e.g. 'Seed={{ attempt }}' (repeatable; over the spec's review.vary)",
    )


def duration_flag(text: str) -> float:
    from lamina_batch.errors import ConfigError
    from lamina_batch.spec import parse_duration

    try:
        return parse_duration(text)
    except (ConfigError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (use e.g. 90, 90s, 15m, 2h): {e}") from None


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return n


def shard_flag(text: str) -> tuple[int, int]:
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N (e.g. 2/4)") from None
    if not (n >= 1 and 1 <= i <= n):
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= I <= N (e.g. 2/4)")
    return i, n


def rows_flag(text: str) -> str:
    """`--rows 1-5,42`: checked here so a bad list exits 2 before anything is read."""
    from lamina_batch.errors import ConfigError
    from lamina_batch.selection import parse_rows

    try:
        parse_rows(text)
    except ConfigError as e:
        problem = e.problems[0]
        hint = f" ({problem.hint})" if problem.hint else ""
        raise argparse.ArgumentTypeError(problem.message + hint) from None
    return text


def add_subset_flags(parser: argparse.ArgumentParser) -> None:
    """`--rows` and `--limit` on run/plan/validate: a subset with the same run identities as the full batch."""
    parser.add_argument("--rows", type=rows_flag, metavar="1-5,42", help="only these data rows (1-based)")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="only the first N items after `where`")


def report_flag(text: str) -> tuple[str, Path]:
    fmt, sep, path = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not FORMAT=PATH (e.g. html=out/gallery.html)")
    if fmt not in REPORT_FORMATS:
        near = difflib.get_close_matches(fmt, REPORT_FORMATS, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else f" (one of {', '.join(REPORT_FORMATS)})"
        raise argparse.ArgumentTypeError(f"unknown report format {fmt!r}{hint}")
    return fmt, Path(path)


def listen_flag(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8787)")
    return host, int(port)
