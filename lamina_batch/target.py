"""Where API requests go and with which credentials: a Lamina emulator started in-process, or what
`credentials.resolve_credentials` finds (LAMINA_API_KEY, else the login Lamina's own CLI keeps); and the
`LaminaClient` for it, sized for a pipeline's concurrency. Every command that talks to the API comes through here.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .binding import Origin
    from .client import LaminaClient
    from .credentials import CredentialSource
    from .emulator import Emulator, EmulatorConfig
    from .models import Dialect, Pipeline

__all__ = [
    "DEFAULT_BASE_URL",
    "ApiTarget",
    "api_target",
    "emulator_state_file",
    "make_client",
    "optional_api_target",
    "target_origin",
    "unreachable_as_config",
]

DEFAULT_BASE_URL = "https://app.uselamina.ai"


@dataclass(frozen=True)
class ApiTarget:
    """The credentials to send (they carry the base URL) and whether they are the in-process emulator's. Neither
    the repr nor any attribute shows a key or token."""

    credentials: CredentialSource
    emulator: bool = False

    @property
    def base_url(self) -> str:
        return self.credentials.base_url

    def __repr__(self) -> str:
        return f"ApiTarget(base_url={self.base_url!r}, emulator={self.emulator})"


@contextlib.contextmanager
def api_target(emulator: bool, *, state_file: Path | None = None) -> Iterator[ApiTarget]:
    """The in-process emulator's target while the block runs, or the credentials found in the documented order
    (DESIGN §3): LAMINA_API_KEY, else the stored login (`lamina login`); LAMINA_BASE_URL, else the stored login's
    base URL (only with the stored login), else the default. Raises before any request: MissingApiKeyError (none:
    one line naming both ways in), CredentialsFileError (the stored login's file is unreadable or malformed).
    `state_file`: where the in-process emulator keeps its runs, so a resumed batch finds them (emulator/journal)."""
    from .credentials import resolve_credentials

    if emulator:
        from .emulator import EmulatorConfig

        # Lamina's real 100/min limit, but short runs: a first try should take seconds, not minutes.
        emu = _start_emulator(EmulatorConfig(duration=(1.0, 3.0), seed=0, state_file=state_file))
        try:
            yield ApiTarget(resolve_credentials(emulator=(emu.base_url, emu.key)), emulator=True)
        finally:
            emu.stop()
        return
    yield ApiTarget(resolve_credentials())


@contextlib.contextmanager
def optional_api_target(emulator: bool) -> Iterator[ApiTarget | None]:
    """`api_target` for a command that only *may* send requests (`plan`'s credits): None instead of an error
    when there are no usable credentials, so that what it would ask reads "unknown"."""
    with contextlib.ExitStack() as stack:
        try:
            target: ApiTarget | None = stack.enter_context(api_target(emulator))
        except ConfigError:
            target = None
        yield target


def make_client(target: ApiTarget, dialect: Dialect, pipeline: Pipeline | None = None) -> LaminaClient:
    """A client for `target`; with a pipeline, at its rate limit and with connections for its concurrency."""
    from .client import LaminaClient

    if pipeline is None:
        return LaminaClient(target.base_url, target.credentials, dialect=dialect)
    # every run in flight holds a connection during /wait; leave room for starts and downloads
    connections = max(128, pipeline.run.concurrency + 16)
    return LaminaClient(
        target.base_url,
        target.credentials,
        dialect=dialect,
        rate=pipeline.run.rate_limit,
        rate_cap=pipeline.run.rate_limit_explicit,
        max_connections=connections,
    )


def target_origin(target: ApiTarget, pipeline: Pipeline) -> Origin:
    """The origin a manifest made through `target` belongs to (binding.py)."""
    from .binding import origin_for

    return origin_for(target.base_url, pipeline.api, emulator=target.emulator)


@contextlib.contextmanager
def unreachable_as_config(base_url: str) -> Iterator[None]:
    """Around requests made before anything started (the preflight): a server that cannot be reached or used
    (connection refused, unknown host, TLS failure, a redirect, a reply that is not the API's) becomes an
    UnreachableError, exit 2, naming the base URL (userinfo masked) and what to check. Answers that are the API's
    own (a rejected key, 403, no credits) pass through."""
    from .errors import ApiError, AuthError, BatchFatalError, EndpointError, Problem, RunFatalError, UnreachableError
    from .wire import mask_url

    try:
        yield
    except ApiError as e:
        if isinstance(e, AuthError) or (
            isinstance(e, BatchFatalError | RunFatalError) and not isinstance(e, EndpointError)
        ):
            raise
        raise UnreachableError(
            Problem(
                f"cannot use the Lamina API at {mask_url(base_url)}: {e}",
                hint="check LAMINA_BASE_URL, the network and any proxy, and that the server is up; nothing was started",
            )
        ) from e


def emulator_state_file(manifest: Path) -> Path:
    """Where an in-process emulator serving `manifest`'s batch keeps its runs: beside it."""
    return manifest.with_name(manifest.name + ".emulator-runs.jsonl")


def _start_emulator(config: EmulatorConfig) -> Emulator:
    """A started in-process emulator: on the port its state file last served on when that is free (the output
    URLs a resumed batch stored point there), else on any free port."""
    from .emulator import Emulator
    from .emulator.journal import Journal

    port = Journal(config.state_file).last_port() if config.state_file is not None else None
    if port is not None:
        emu = Emulator(dataclasses.replace(config, port=port))
        try:
            emu.start()
        except OSError:
            emu.stop()
        else:
            return emu
    emu = Emulator(config)
    emu.start()
    return emu
