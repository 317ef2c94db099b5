"""The review server: one page over a pipeline's manifest, its images, and two write endpoints (verdict, undo).

Loopback only unless `allow_remote`; the Host header must name this server (no DNS rebinding); writes need the
per-session token the page carries and a same-origin `Origin`. Manifest reads and verdict writes run on worker
threads, so a batch holding SQLite's write lock for a moment never stalls the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import secrets
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from lamina_batch.errors import ConfigError, ManifestError, Problem

# The h11 server core (lamina_batch.httpd, PLAN contract 4) replaces this import when it lands; the handler
# already speaks exactly its Request/Reply shape.
from lamina_batch.httpd import HttpServer, Limits, Reply, Request, json_reply
from lamina_batch.manifest import Manifest
from lamina_batch.models import RunRecord, RunState
from lamina_batch.review.page import render_page
from lamina_batch.review.source import IMAGE_SUFFIXES, ReviewSource, build_items, image_downloads
from lamina_batch.verdicts import MAX_NOTE_CHARS, VERDICT_VALUES, Verdict, VerdictStore

__all__ = ["ReviewServer", "ReviewStats", "ReviewThread", "check_bind_host", "serve_review"]

MAX_BODY = 64 * 1024
_MIME = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".avif": "image/avif",
    ".bmp": "image/bmp",
    ".svg": "image/svg+xml",
}
_COMMON_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)
# A served file can never run script in this origin (where the token lives), whatever it contains.
_FILE_HEADERS = (
    *_COMMON_HEADERS,
    ("Content-Security-Policy", "sandbox; default-src 'none'; style-src 'unsafe-inline'"),
)


def check_bind_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless `allow_remote`: the page has no login, anyone who reaches it can
    approve and reject. ConfigError (exit 2) naming the fix."""
    if allow_remote or _is_loopback(host):
        return
    raise ConfigError(
        Problem(
            f"refusing to serve the review page on {host!r}: it has no login, so anyone who can reach it could "
            "change verdicts",
            path="--host",
            hint="use 127.0.0.1 (the default), or pass --allow-remote if that network is trusted",
        )
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ReviewStats:
    """What the server saw: requests served and writes refused by the cross-site guard."""

    requests: int = 0
    refused: int = 0
    verdicts: int = 0


def _error(status: int, message: str) -> Reply:
    return json_reply(status, {"error": message}, _COMMON_HEADERS)


class ReviewServer:
    """The review app on the running event loop: `await start()` binds and returns the URL, `await close()`."""

    def __init__(
        self, source: ReviewSource, *, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False
    ) -> None:
        check_bind_host(host, allow_remote)
        self.source = source
        self.host = host
        self.port = port
        self.allow_remote = allow_remote
        self.token = secrets.token_urlsafe(32)
        self.stats = ReviewStats()
        self.url = ""
        self._server: HttpServer | None = None
        self._reads = ThreadPoolExecutor(4, thread_name_prefix="lamina-review-read")
        self._writes = ThreadPoolExecutor(1, thread_name_prefix="lamina-review-write")
        self._manifest: Manifest | None = None
        self._store: VerdictStore | None = None
        self._stamp: sqlite3.Connection | None = None
        self._stamp_lock = threading.Lock()
        self._hosts: frozenset[str] = frozenset()

    async def start(self) -> str:
        await asyncio.get_running_loop().run_in_executor(self._writes, self._open)
        self.port = await self._listen()
        shown = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host  # noqa: S104 - naming, not binding
        shown = f"[{shown}]" if ":" in shown else shown
        self.url = f"http://{shown}:{self.port}/"
        names = {shown, "127.0.0.1", "localhost", "[::1]"}
        self._hosts = frozenset(f"{n}:{self.port}" for n in names)
        return self.url

    def _open(self) -> None:
        src = self.source
        # the store first: on an older manifest it upgrades the file, which the reader then opens as is
        self._store = VerdictStore.open(src.manifest, pipeline_name=src.pipeline_name)
        self._manifest = Manifest.open(src.manifest, pipeline_name=src.pipeline_name, writer=False, create=False)
        uri = f"{src.manifest.resolve().as_uri()}?mode=ro"
        self._stamp = sqlite3.connect(uri, uri=True, check_same_thread=False)

    async def _listen(self) -> int:
        self._server = HttpServer(
            self.handle, self.host, self.port, limits=Limits(max_body=MAX_BODY), name="review server"
        )
        await self._server.start()
        return self._server.port

    async def _unlisten(self) -> None:
        if self._server is not None:
            await self._server.stop()

    async def close(self) -> None:
        await self._unlisten()
        self._reads.shutdown(wait=True)
        self._writes.shutdown(wait=True)
        for closable in (self._manifest, self._store, self._stamp):
            if closable is not None:
                closable.close()

    # ----------------------------------------------------------------- routing

    def handle(self, req: Request) -> Reply | Awaitable[Reply]:
        self.stats.requests += 1
        if not self.allow_remote and req.headers.get("host", "") not in self._hosts:
            self.stats.refused += 1
            return _error(421, "this review server answers only to its own loopback address")
        path = req.path
        if req.method == "POST":
            refused = self._guard(req)
            if refused is not None:
                self.stats.refused += 1
                return refused
            if path == "/api/verdict":
                return self._in(self._writes, self._verdict, req.body)
            if path == "/api/undo":
                return self._in(self._writes, self._undo, req.body)
            return _error(404, f"no such endpoint {path}")
        if req.method != "GET":
            return _error(405, f"{req.method} is not allowed here")
        if path == "/":
            body, csp = render_page(self.source.pipeline_name, self.source.step_ids, self.token)
            headers = (*_COMMON_HEADERS, ("Content-Security-Policy", csp), ("Cache-Control", "no-store"))
            return Reply(200, body, "text/html; charset=utf-8", headers)
        if path == "/api/items":
            return self._in(self._reads, self._items)
        if path == "/api/stamp":
            return self._in(self._reads, self._stamp_now)
        if path.startswith("/files/"):
            return self._in(self._reads, self._file, path)
        if path == "/favicon.ico":
            return Reply(204, b"", "image/x-icon", _COMMON_HEADERS)
        return _error(404, f"nothing at {path}")

    def _guard(self, req: Request) -> Reply | None:
        """Writes only from this server's own page: its token, its origin, and JSON (never a form post)."""
        token = req.headers.get("x-review-token", "")
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            return _error(403, "missing or wrong review token; reload the review page")
        origin = req.headers.get("origin")
        if origin is not None and origin != f"http://{req.headers.get('host', '')}":
            return _error(403, f"cross-site request from {origin} refused")
        if req.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return _error(403, "cross-site request refused")
        if not req.headers.get("content-type", "").startswith("application/json"):
            return _error(415, "send JSON")
        return None

    async def _in(self, pool: ThreadPoolExecutor, fn: Callable[..., Reply], *args: Any) -> Reply:
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except ManifestError as e:
            return _error(503, str(e))

    # ----------------------------------------------------------------- reads

    def _items(self) -> Reply:
        assert self._manifest is not None
        assert self._store is not None
        verdicts = self._store.latest()
        data = build_items(self.source, self._manifest.iter_runs(), verdicts)
        data["stamp"] = self._data_version()
        return json_reply(200, data, (*_COMMON_HEADERS, ("Cache-Control", "no-store")))

    def _data_version(self) -> int:
        # changes whenever any other connection (the batch, the verdict store, a CLI) commits to the file
        assert self._stamp is not None
        with self._stamp_lock:
            return int(self._stamp.execute("PRAGMA data_version").fetchone()[0])

    def _stamp_now(self) -> Reply:
        return json_reply(200, {"stamp": self._data_version()}, (*_COMMON_HEADERS, ("Cache-Control", "no-store")))

    def _file(self, path: str) -> Reply:
        """`/files/<identity>/<n>` (current attempt) or `/files/<identity>/a<attempt>/<n>` (an earlier one)."""
        assert self._manifest is not None
        parts = path.split("/")[2:]
        if len(parts) not in (2, 3) or not parts[-1].isdigit():
            return _error(404, "no such file")
        rec = self._manifest.get(unquote(parts[0]))
        if rec is None:
            return _error(404, "no such run")
        outputs, downloads = rec.outputs, rec.downloads
        if len(parts) == 3:
            past = self.source.history(rec.identity) if self.source.history else ()
            match = [p for p in past if f"a{p.attempt}" == parts[1]]
            if not match:
                return _error(404, "no such attempt")
            outputs, downloads = match[0].outputs, match[0].downloads
        index = int(parts[-1])
        if index not in image_downloads(outputs, downloads):
            return _error(404, "no such image")
        return self._read_file(downloads[index].path)

    def _read_file(self, rel_path: str) -> Reply:
        root = self.source.output_dir.resolve()
        try:
            target = (root / rel_path).resolve(strict=True)
        except OSError:
            return _error(404, "the file is gone from the output folder")
        if not target.is_relative_to(root) or not target.is_file() or target.suffix.lower() not in IMAGE_SUFFIXES:
            return _error(404, "no such image")
        body = target.read_bytes()
        mime = _MIME.get(target.suffix.lower(), "application/octet-stream")
        return Reply(200, body, mime, (*_FILE_HEADERS, ("Cache-Control", "private, max-age=3600")))

    # ----------------------------------------------------------------- writes

    def _current(self, payload: dict[str, Any]) -> tuple[RunRecord, int] | Reply:
        assert self._manifest is not None
        identity, attempt = payload.get("identity"), payload.get("attempt")
        if not isinstance(identity, str) or not isinstance(attempt, int) or isinstance(attempt, bool):
            return _error(400, "identity (text) and attempt (number) are required")
        rec = self._manifest.get(identity)
        if rec is None:
            return _error(404, "no such run in this manifest")
        current = max(rec.attempts, 1)
        if attempt != current:
            return _error(409, f"attempt {attempt} is no longer this run's current attempt ({current}); reload")
        return rec, current

    def _verdict(self, body: bytes) -> Reply:
        payload = _json_body(body)
        if isinstance(payload, Reply):
            return payload
        found = self._current(payload)
        if isinstance(found, Reply):
            return found
        rec, attempt = found
        verdict, note = payload.get("verdict"), payload.get("note")
        if verdict not in VERDICT_VALUES:
            return _error(400, "verdict must be approved or rejected")
        if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE_CHARS):
            return _error(400, f"note must be text of at most {MAX_NOTE_CHARS} characters")
        if rec.state is not RunState.COMPLETED:
            return _error(409, f"only completed runs are reviewed; this one is {rec.state.value}")
        assert self._store is not None
        v = self._store.record(rec.identity, attempt, str(verdict), note, source="review")
        self.stats.verdicts += 1
        return json_reply(200, {"verdict": _public(v)}, _COMMON_HEADERS)

    def _undo(self, body: bytes) -> Reply:
        payload = _json_body(body)
        if isinstance(payload, Reply):
            return payload
        found = self._current(payload)
        if isinstance(found, Reply):
            return found
        rec, attempt = found
        assert self._store is not None
        undone, now = self._store.undo(rec.identity, attempt)
        return json_reply(
            200, {"undone": _public(undone) if undone else None, "verdict": _public(now) if now else None}
        )


def _public(v: Verdict) -> dict[str, Any]:
    return {"verdict": v.verdict, "note": v.note, "at": v.at}


def _json_body(body: bytes) -> dict[str, Any] | Reply:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _error(400, "the body is not JSON")
    if not isinstance(payload, dict):
        return _error(400, "the body must be a JSON object")
    return payload


class ReviewThread:
    """The review server on its own event loop in a background thread; a context manager (tests, embedding)."""

    def __init__(self, source: ReviewSource, **kwargs: Any) -> None:
        self.server = ReviewServer(source, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def token(self) -> str:
        return self.server.token

    def start(self) -> str:
        self._thread = threading.Thread(target=self._main, name="lamina-review", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self.url

    def _main(self) -> None:
        async def run() -> None:
            self._stop = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            try:
                await self.server.start()
            except BaseException as e:
                self._error = e
                self._ready.set()
                await self.server.close()
                return
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.server.close()

        asyncio.run(run())

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join()
        self._thread = None

    def __enter__(self) -> ReviewThread:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_review(
    source: ReviewSource,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    allow_remote: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the review page until interrupted (KeyboardInterrupt reaches the caller after a clean close).
    `on_ready(url)` is called once it listens: the CLI prints the URL as its first line (and opens a browser
    for `--open`). ConfigError for a refused host, ManifestError for a missing or foreign manifest, OSError
    when the port is taken."""
    check_bind_host(host, allow_remote)
    if not Path(source.manifest).is_file():
        raise ManifestError(f"no manifest at {source.manifest} yet; run the pipeline first")

    async def main() -> None:
        server = ReviewServer(source, host=host, port=port, allow_remote=allow_remote)
        url = await server.start()
        try:
            if on_ready is not None:
                on_ready(url)
            await asyncio.Event().wait()
        finally:
            await server.close()

    asyncio.run(main())
