"""`lamina-batch emulator`: serve a local Lamina-compatible API until interrupted (with `--login-file`, also an
OAuth login for it, written where `lamina login` keeps one, to try the stored-login flow)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from pathlib import Path
from urllib.parse import urlsplit

from lamina_batch.cli.common import EXIT_OK, Out, UsageError, first_line
from lamina_batch.cli.parser import Commands

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(commands: Commands) -> None:
    e = commands.add("emulator", "serve a local Lamina-compatible API", cmd_emulator)
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=0, help="0 picks a free port")
    e.add_argument("--key", default="lma_emulator", help="the API key it accepts")
    e.add_argument("--config", type=Path, metavar="FILE", help="catalogue, durations, rate limit, faults (YAML)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--login-file",
        type=Path,
        metavar="PATH",
        help="write an OAuth login for this emulator there, as `lamina login` would "
        "(e.g. /tmp/try/.lamina/config.json, then HOME=/tmp/try lamina-batch run ...)",
    )
    e.add_argument(
        "--access-ttl", type=float, metavar="SECONDS", help="with --login-file: how long its access tokens live"
    )


def cmd_emulator(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.emulator import EmulatorConfig, OAuthConfig, serve_forever

    try:
        config = EmulatorConfig.from_yaml(args.config) if args.config else EmulatorConfig()
    except (OSError, ValueError) as e:
        raise UsageError(f"--config {args.config}: {first_line(e)}") from None
    config = dataclasses.replace(config, host=args.host, port=args.port, key=args.key, seed=args.seed)
    if args.access_ttl is not None:
        if args.login_file is None:
            raise UsageError("--access-ttl goes with --login-file")
        if not args.access_ttl > 0:
            raise UsageError("--access-ttl must be a positive number of seconds")
    if args.login_file is not None:
        _check_login_file(args.login_file)
        oauth = config.oauth or OAuthConfig()
        if args.access_ttl is not None:
            oauth = dataclasses.replace(oauth, access_ttl=args.access_ttl)
        config = dataclasses.replace(config, oauth=oauth)
    with contextlib.suppress(KeyboardInterrupt):
        serve_forever(config, out.result, login_file=args.login_file)
    return EXIT_OK


def _check_login_file(path: Path) -> None:
    """Only a missing file or an earlier emulator's login may be replaced: never the user's real Lamina login."""
    if not path.exists():
        return
    try:
        base = json.loads(path.read_text(encoding="utf-8"))["credentials"]["baseUrl"]
        host = urlsplit(base).hostname
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        host = None
    if host not in _LOOPBACK:
        raise UsageError(
            f"--login-file {path}: exists and holds no emulator login (it may be your Lamina login); "
            "choose another path, e.g. /tmp/try/.lamina/config.json"
        )
