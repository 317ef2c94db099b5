"""The `lamina-batch` command: `main(argv) -> int` parses, runs one command and maps what it raises to the
documented exit codes (README "Exit codes"); `console()` is the installed entry point. Only this package prints;
the commands call the library (`lamina_batch.batch`, `.operations`), which raises `errors.*` and emits `events.*`.
"""

from __future__ import annotations

import gc
import sys
import traceback
from collections.abc import Sequence

from lamina_batch.cli import apps, auth, emulator, manifests, review, run, validate_plan
from lamina_batch.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILED_RUNS,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_STOPPED,
    Handler,
    Out,
    UsageError,
    flag_name,
    silence_stdout,
)
from lamina_batch.cli.parser import Group, build_parser, normalise_argv
from lamina_batch.errors import (
    ApiError,
    AuthError,
    ConfigError,
    ForbiddenError,
    LaminaBatchError,
    LoginRefreshError,
    ManifestError,
    ManifestLockedError,
    NotFoundError,
    OptionError,
)

__all__ = ["GROUPS", "console", "main"]

AUTH_ADVICE = (
    "check LAMINA_API_KEY (and LAMINA_BASE_URL), or run `lamina login` again; `lamina-batch auth status` shows "
    "which credentials are used"
)

# Every command, in `--help` order. A new command: a module with `register(commands)` (see cli/manifests.py),
# listed here.
GROUPS: tuple[Group, ...] = (run, validate_plan, manifests, review, apps, auth, emulator)


def console() -> int:
    """The `lamina-batch` command and `python -m lamina_batch`: `main()` in a process of its own."""
    # Start-up builds only long-lived objects (modules, the schema, compiled templates) and no garbage
    # cycles: collecting while it runs is ~30 ms of wasted work at every start. main() turns the collector back
    # on before any command's real work (run: just before the batch, with those objects frozen).
    gc.disable()
    code = main(own_process=True)
    # Everything left is freed with the process: skip the interpreter's final full garbage collection
    # (~0.08 s after a 2000-run batch, measured).
    gc.freeze()
    return code


def main(argv: Sequence[str] | None = None, *, own_process: bool = False) -> int:
    """Run the CLI; return the exit code (never raises, never prints a traceback unless --verbose).
    `own_process`: the process is ours alone (console()), so process-wide tuning (the GC) is allowed."""
    parser = build_parser(GROUPS)
    args_list = normalise_argv(list(sys.argv[1:] if argv is None else argv), parser.commands)
    try:
        args = parser.parse_args(args_list)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else EXIT_CONFIG
    if not args.command:
        parser.print_usage(sys.stderr)
        return EXIT_CONFIG
    args.own_process = own_process
    if own_process and not getattr(args, "enables_gc", False):
        gc.enable()
    out = Out(quiet=getattr(args, "quiet", False), verbose=getattr(args, "verbose", False))
    handler: Handler = args.handler
    try:
        return handler(args, out)
    except (LaminaBatchError, UsageError, KeyboardInterrupt) as e:
        return _failed(e, out)
    except BrokenPipeError:
        # stdout's reader went away mid-write (`plan --json | head -1`): quiet, like any Unix filter
        silence_stdout()
        return EXIT_OK
    except Exception as e:  # the last line of defence: one line, never a traceback unless asked
        if out.verbose:
            traceback.print_exc()
        out.err(f"lamina-batch: internal error: {type(e).__name__}: {e} (run with --verbose for the traceback)")
        return EXIT_FAILED_RUNS


def _failed(e: BaseException, out: Out) -> int:
    """Print what went wrong in one line (a line per problem for bad input) and return its exit code."""
    if isinstance(e, OptionError):
        out.err(f"lamina-batch: error: {e.worded(flag_name)}")
        return EXIT_CONFIG
    if isinstance(e, ConfigError):
        for problem in e.problems:
            out.err(str(problem))
        return EXIT_CONFIG
    if isinstance(e, UsageError):
        out.err(f"lamina-batch: error: {e}")
        return EXIT_CONFIG
    if isinstance(e, ManifestError):
        out.err(f"lamina-batch: {e}")
        return EXIT_STOPPED if isinstance(e, ManifestLockedError) else EXIT_CONFIG
    if isinstance(e, LoginRefreshError):  # an AuthError whose message ends with its own advice
        out.err(f"lamina-batch: {e}")
        return EXIT_CONFIG
    if isinstance(e, AuthError | ForbiddenError):
        out.err(f"lamina-batch: {e}: {AUTH_ADVICE}")
        return EXIT_CONFIG
    if isinstance(e, NotFoundError):
        out.err(f"lamina-batch: {e}")
        return EXIT_CONFIG
    if isinstance(e, ApiError):
        out.err(f"lamina-batch: Lamina API error: {e}")
        return EXIT_FAILED_RUNS
    if isinstance(e, KeyboardInterrupt):
        out.err("lamina-batch: interrupted")
        return EXIT_SIGINT
    out.err(f"lamina-batch: {e}")
    return EXIT_FAILED_RUNS
