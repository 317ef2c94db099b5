"""A manifest belongs to one server: the API origin it was made against (scheme, host, port, path prefix, dialect;
never a key), kept in its `meta` table, and the refusal (OriginMismatchError) to act on it against another one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .errors import OriginMismatchError, Problem
from .wire import mask_url

if TYPE_CHECKING:
    from .manifest import Manifest
    from .models import RunRecord

__all__ = ["META_KEY", "Origin", "bind_manifest", "check_origin", "origin_for"]

META_KEY = "api_origin"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class Origin:
    """Where a manifest's runs live. The in-process emulator is one origin whatever its port (a resume starts it
    on a new one); any other server is its scheme, host, port and path prefix. `dialect` is the API's."""

    emulator: bool
    dialect: str
    scheme: str = ""
    host: str = ""
    port: int | None = None
    prefix: str = ""

    def same_server(self, other: Origin) -> bool:
        if self.emulator or other.emulator:
            return self.emulator == other.emulator and self.dialect == other.dialect
        return self == other

    @property
    def loopback(self) -> bool:
        return self.emulator or self.host in _LOOPBACK

    def describe(self) -> str:
        """`https://app.uselamina.ai (runs API)` or `the in-process emulator (--emulator, runs API)`."""
        if self.emulator:
            return f"the in-process emulator (--emulator, {self.dialect} API)"
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == _DEFAULT_PORTS.get(self.scheme) else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.prefix} ({self.dialect} API)"

    def to_json(self) -> str:
        return json.dumps(
            {
                "emulator": self.emulator,
                "dialect": self.dialect,
                "scheme": self.scheme,
                "host": self.host,
                "port": self.port,
                "prefix": self.prefix,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Origin | None:
        try:
            d = json.loads(text)
            return cls(
                emulator=bool(d["emulator"]),
                dialect=str(d["dialect"]),
                scheme=str(d.get("scheme", "")),
                host=str(d.get("host", "")),
                port=None if d.get("port") is None else int(d["port"]),
                prefix=str(d.get("prefix", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None


def origin_for(base_url: str, dialect: str, *, emulator: bool) -> Origin:
    """The origin of a base URL (userinfo dropped, default port filled in, trailing slash ignored)."""
    if emulator:
        return Origin(emulator=True, dialect=dialect)
    parts = urlsplit(mask_url(base_url))
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return Origin(
        emulator=False,
        dialect=dialect,
        scheme=scheme,
        host=(parts.hostname or "").lower(),
        port=port if port is not None else _DEFAULT_PORTS.get(scheme),
        prefix=parts.path.rstrip("/"),
    )


def check_origin(manifest: Manifest, origin: Origin) -> Origin | None:
    """The origin recorded in `manifest` (None: none yet); OriginMismatchError if it is another server's."""
    text = manifest.get_meta(META_KEY)
    recorded = None if text is None else Origin.from_json(text)
    if recorded is not None and not recorded.same_server(origin):
        raise _mismatch(manifest, recorded, origin)
    return recorded


def bind_manifest(manifest: Manifest, origin: Origin, note: Callable[[str], None]) -> None:
    """Check `manifest` (a writer) against `origin` and record it there on first use. A manifest from before the
    binding is adopted by this origin (`note` says so once), unless its runs' output URLs are loopback (made on an
    emulator) and this origin is a remote server: then it is refused like any other mismatch."""
    if check_origin(manifest, origin) is not None:
        return
    if _has_runs(manifest):
        if not origin.loopback and _made_on_loopback(manifest.iter_runs()):
            raise _mismatch(manifest, Origin(emulator=True, dialect=origin.dialect), origin)
        note(f"{manifest.path}: this manifest recorded no server; it now belongs to {origin.describe()}")
    manifest.set_meta(META_KEY, origin.to_json())


def _has_runs(manifest: Manifest) -> bool:
    return next(iter(manifest.iter_runs()), None) is not None


def _made_on_loopback(records: Iterable[RunRecord], look_at: int = 50) -> bool:
    """True if the first runs with output URLs point at a loopback host (an emulator's files)."""
    for seen, rec in enumerate(records, 1):
        for out in rec.outputs:
            if isinstance(out.value, str) and out.value.startswith(("http://", "https://")):
                return (urlsplit(out.value).hostname or "") in _LOOPBACK
        if seen >= look_at:
            break
    return False


def _mismatch(manifest: Manifest, recorded: Origin, now: Origin) -> OriginMismatchError:
    return OriginMismatchError(
        Problem(
            f"this manifest belongs to {recorded.describe()}, not {now.describe()}",
            str(manifest.path),
            hint="use another --manifest for this server, or delete this manifest to start over there",
        )
    )
