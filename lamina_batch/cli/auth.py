"""`lamina-batch auth status`: where the credentials come from (environment or the stored login and its file), the
origin, the kind and the expiry; never a key or token. Exit 0 when usable, 2 when not."""

from __future__ import annotations

import argparse

from lamina_batch.cli.common import EXIT_CONFIG, EXIT_OK, Out
from lamina_batch.cli.parser import Commands


def register(commands: Commands) -> None:
    auth = commands.group("auth", "the credentials lamina-batch would use", dest="auth_command", metavar="status")
    auth.add("status", "where the credentials come from, their kind and expiry (never a key or token)", cmd_status)


def cmd_status(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.credentials import describe_credentials

    status = describe_credentials()
    for line in status.lines():
        out.result(line)
    return EXIT_OK if status.usable else EXIT_CONFIG
