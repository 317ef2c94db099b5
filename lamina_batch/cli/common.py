"""What every command shares: the exit codes, `Out` (every printed line goes through it), UsageError, and the
`BatchOptions` a command's flags stand for.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lamina_batch.options import BatchOptions

EXIT_OK = 0
EXIT_FAILED_RUNS = 1
EXIT_CONFIG = 2
EXIT_STOPPED = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

# BatchOptions fields whose flag is not simply the field's name with dashes
_FLAGS = {"reports": "--report"}


class UsageError(Exception):
    """A command-line mistake found after argparse (bad flag value); exit 2."""


class Out:
    """All printing goes through here so --quiet and stream choice live in one place."""

    def __init__(self, *, quiet: bool = False, verbose: bool = False) -> None:
        self.quiet = quiet
        self.verbose = verbose
        self.stdout_closed = False

    def info(self, text: str) -> None:
        if not self.quiet:
            self.result(text)

    def result(self, text: str) -> None:
        if self.stdout_closed:
            return
        try:
            print(text, flush=True)
        except BrokenPipeError:
            # the reader went away (`plan --json | head -1`): stop writing to stdout, carry on quietly
            self.stdout_closed = True
            silence_stdout()

    def err(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def silence_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered, and the interpreter's flush at exit, go nowhere instead
    of raising BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


Handler = Callable[[argparse.Namespace, Out], int]
"""A command: parsed arguments in, printing through Out, the exit code out."""


def batch_options(args: argparse.Namespace, **overrides: Any) -> BatchOptions:
    """The BatchOptions these flags stand for: each flag fills the field of the same name (its argparse dest), so
    a new `run` flag needs only its BatchOptions field. Flags a command lacks keep the field's default."""
    from lamina_batch.options import BatchOptions

    values: dict[str, Any] = {}
    for field in dataclasses.fields(BatchOptions):
        if hasattr(args, field.name):
            value = getattr(args, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    values.update(overrides)
    return BatchOptions(**values)


def flag_name(option: str) -> str:
    """The flag that sets a BatchOptions field: `rate_limit` is `--rate-limit`."""
    return _FLAGS.get(option, "--" + option.replace("_", "-"))


def first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
