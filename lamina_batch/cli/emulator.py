"""`lamina-batch emulator`: serve a local Lamina-compatible API until interrupted."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from pathlib import Path

from lamina_batch.cli.common import EXIT_OK, Out, UsageError, first_line
from lamina_batch.cli.parser import Commands


def register(commands: Commands) -> None:
    e = commands.add("emulator", "serve a local Lamina-compatible API", cmd_emulator)
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=0, help="0 picks a free port")
    e.add_argument("--key", default="lma_emulator", help="the API key it accepts")
    e.add_argument("--config", type=Path, metavar="FILE", help="catalogue, durations, rate limit, faults (YAML)")
    e.add_argument("--seed", type=int, default=0)


def cmd_emulator(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.emulator import EmulatorConfig, serve_forever

    try:
        config = EmulatorConfig.from_yaml(args.config) if args.config else EmulatorConfig()
    except (OSError, ValueError) as e:
        raise UsageError(f"--config {args.config}: {first_line(e)}") from None
    config = dataclasses.replace(config, host=args.host, port=args.port, key=args.key, seed=args.seed)
    with contextlib.suppress(KeyboardInterrupt):
        serve_forever(config, out.result)
    return EXIT_OK
