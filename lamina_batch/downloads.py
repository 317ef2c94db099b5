"""Output files on disk: safe output paths, atomic downloads (temp file, fsync, rename, directory fsync) with
size and sha256, a total time cap per download besides the gap timeout, re-verification on resume, and text
outputs written the same way. A cancelled download (a stop) leaves no partial file and no record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import re
import secrets
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from types import TracebackType
from urllib.parse import urlsplit

import httpx

from .atomic import fsync_dir
from .errors import DownloadError, UnsafePathError
from .models import DownloadRecord, RunOutput

__all__ = [
    "DEFAULT_TOTAL_BASE",
    "DEFAULT_TOTAL_RATE",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "Downloader",
    "ext_for",
    "guess_ext",
    "prepare_output_path",
    "safe_output_path",
]

MAX_NAME_BYTES = 255  # NAME_MAX on Linux/macOS filesystems
MAX_PATH_BYTES = 4096  # PATH_MAX on Linux

_CONTENT_TYPE_EXT: dict[str, str] = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/pjpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/avif": ".avif",
    "image/heic": ".heic",
    "image/svg+xml": ".svg",
    "image/tiff": ".tiff",
    "image/bmp": ".bmp",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/ogg": ".ogg",
    "text/plain": ".txt",
    "text/markdown": ".md",
    "text/html": ".html",
    "text/csv": ".csv",
    "application/json": ".json",
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "model/gltf-binary": ".glb",
}

_TYPE_DEFAULT_EXT: dict[str, str] = {
    "image": ".png",
    "video": ".mp4",
    "audio": ".mp3",
    "text": ".txt",
    "json": ".json",
}

# A URL suffix is trusted as an extension only when it looks like one (".png", ".jpeg", ".mp4").
_SUFFIX_RE = re.compile(r"^\.[a-z0-9]{1,5}$")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_CHUNK = 64 * 1024

# The default total cap of one download: this long whatever its size, plus the time its size takes at this pace
# (a 10 MB image: 120 s + 153 s). A server that drips bytes just inside the gap timeout still ends.
DEFAULT_TOTAL_BASE = 120.0
DEFAULT_TOTAL_RATE = 64 * 1024  # bytes per second


def _refuse(rendered: str, reason: str) -> UnsafePathError:
    shown = rendered if len(rendered) <= 120 else rendered[:117] + "..."
    return UnsafePathError(f"download path {shown!r} refused: {reason}")


def _inside(path: Path, base: Path) -> bool:
    return path == base or path.is_relative_to(base)


def safe_output_path(base_dir: Path, rendered: str) -> Path:
    """The absolute file path for `rendered` under `base_dir`, or UnsafePathError saying why not.

    Refused: empty, NUL or control characters, backslashes (a separator elsewhere), absolute or drive paths,
    empty / `.` / `..` components, a name over 255 bytes, a path over 4096 bytes, and any path whose parent
    (following existing symlinks) resolves outside `base_dir`. The result is built on `base_dir.resolve()`.
    """
    if not rendered:
        raise _refuse(rendered, "the path is empty")
    if "\x00" in rendered:
        raise _refuse(rendered, "it contains a NUL byte")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in rendered):
        raise _refuse(rendered, "it contains a control character")
    if "\\" in rendered:
        raise _refuse(rendered, "it contains a backslash; use '/' between folders")
    try:
        encoded = rendered.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(rendered, "it is not valid UTF-8") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise _refuse(rendered, f"it is longer than {MAX_PATH_BYTES} bytes")
    if rendered.startswith("/") or _DRIVE_RE.match(rendered):
        raise _refuse(rendered, "it is absolute; download paths are relative to the output directory")
    parts = rendered.split("/")
    for part in parts:
        if part == "":
            raise _refuse(rendered, "it has an empty folder name (a '//' or a trailing '/')")
        if part in (".", ".."):
            raise _refuse(rendered, f"it has a {part!r} component")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise _refuse(rendered, f"a name in it is longer than {MAX_NAME_BYTES} bytes")
    base = base_dir.resolve()
    candidate = base.joinpath(*parts)
    if len(os.fsencode(candidate)) > MAX_PATH_BYTES:
        raise _refuse(rendered, f"the full path is longer than {MAX_PATH_BYTES} bytes")
    try:
        parent = candidate.parent.resolve()
    except (OSError, RuntimeError) as e:  # symlink loops
        raise _refuse(rendered, f"its folder cannot be resolved ({e.__class__.__name__})") from None
    if not _inside(parent, base):
        raise _refuse(rendered, "it leaves the output directory through a symlink")
    target = parent / parts[-1]
    if target.is_symlink():
        # os.replace would swap the link itself, but verify() would read through it: refuse either way.
        raise _refuse(rendered, "the file is a symlink")
    if target.is_dir():
        raise _refuse(rendered, "a folder of that name exists")
    return target


def prepare_output_path(base_dir: Path, rendered: str) -> Path:
    """Like safe_output_path, and create the missing folders without ever following a symlink out."""
    target = safe_output_path(base_dir, rendered)
    base = base_dir.resolve()
    base.mkdir(parents=True, exist_ok=True)
    current = base
    for part in target.relative_to(base).parts[:-1]:
        current = current / part
        try:
            current.mkdir(exist_ok=True)
        except FileExistsError:
            raise _refuse(rendered, f"{part!r} exists and is not a folder") from None
        except OSError as e:
            raise DownloadError(f"cannot create folder for {rendered!r}: {e.strerror}") from None
        # Re-check after mkdir: a symlink may have been planted in between.
        st = current.lstat()
        if stat.S_ISLNK(st.st_mode) and not _inside(current.resolve(), base):
            raise _refuse(rendered, f"{part!r} is a symlink leaving the output directory")
    final = safe_output_path(base_dir, rendered)
    if final.parent != target.parent:
        raise _refuse(rendered, "its folder changed while being created")
    return final


def ext_for(content_type: str | None, url: str) -> str:
    """The file extension for a download: from the Content-Type if known, else the URL's suffix, else ""."""
    if content_type:
        mime = content_type.split(";", 1)[0].strip().lower()
        ext = _CONTENT_TYPE_EXT.get(mime)
        if ext:
            return ext
    return _url_suffix(url)


def _url_suffix(url: str) -> str:
    try:
        path = urlsplit(url).path
    except ValueError:
        return ""
    suffix = PurePosixPath(path).suffix.lower()
    return suffix if _SUFFIX_RE.match(suffix) else ""


def guess_ext(output: RunOutput) -> str:
    """The `{{ output.ext }}` for a download path, known before downloading: URL suffix, else by output type.

    Images default to ".png". The Content-Type of the actual download only adds an extension when the rendered
    path has none; it never renames a file whose path already has one.
    """
    value = output.value
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        suffix = _url_suffix(value)
        if suffix:
            return suffix
        return _TYPE_DEFAULT_EXT.get(output.type.lower(), "")
    if isinstance(value, str):
        return ".txt"
    return _TYPE_DEFAULT_EXT.get(output.type.lower(), "")


def _describe(url: str) -> str:
    """Host and path of a URL for messages: output URLs may carry signed query tokens, so those stay out."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    return f"{parts.hostname or ''}{parts.path}"


def _temp_name(final_name: str) -> str:
    suffix = f".partial-{secrets.token_hex(4)}"
    name = final_name
    # Keep the temp name within NAME_MAX even when the final name is close to it.
    while len(("." + name + suffix).encode("utf-8")) > MAX_NAME_BYTES:
        name = name[:-1]
    return "." + name + suffix


def _sha256_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


class _TotalCap:
    """The deadline of one download (every attempt and backoff in it): fixed (`limit`), or by default
    `DEFAULT_TOTAL_BASE` plus the largest size seen so far (Content-Length or bytes received) at
    `DEFAULT_TOTAL_RATE`, moved on as the size becomes known."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self._started = asyncio.get_running_loop().time()
        self._size = 0
        self._timeout: asyncio.Timeout | None = None

    def allowed(self) -> float:
        if self.limit is not None:
            return self.limit
        return DEFAULT_TOTAL_BASE + self._size / DEFAULT_TOTAL_RATE

    def bind(self, timeout: asyncio.Timeout) -> None:
        self._timeout = timeout
        timeout.reschedule(self._started + self.allowed())

    def grow(self, size: int) -> None:
        """The download is at least `size` bytes: with the default cap, it gets the time for them."""
        if self.limit is None and size > self._size and self._timeout is not None:
            self._size = size
            self._timeout.reschedule(self._started + self.allowed())


class _Retryable(Exception):
    """One download attempt failed in a way that another attempt may fix."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: fall back to our own backoff


class Downloader:
    """Fetches output files into `base_dir`, at most `concurrency` at once, on its own HTTP client.

    The client is separate from the API client on purpose: output URLs are public, need no key, and must
    not consume the API's request budget. Transient failures (connect/read errors, 408, 429, 5xx) are retried
    `attempts` times with jittered exponential backoff through the injectable `sleep`. `timeout` is the longest
    gap between two bytes; `total_timeout` caps the whole download, retries included (None: a default scaled by
    the file's size, see `DEFAULT_TOTAL_BASE`). Cancelling a fetch (a stop) removes its partial file.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        concurrency: int = 4,
        client: httpx.AsyncClient | None = None,
        attempts: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        timeout: float = 120.0,
        max_bytes: int | None = 2 * 1024**3,
        total_timeout: float | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if total_timeout is not None and total_timeout <= 0:
            raise ValueError("total_timeout must be positive")
        self._total_timeout = total_timeout
        self.base_dir = base_dir
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=15.0),
            follow_redirects=True,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._sem = asyncio.Semaphore(concurrency)
        self._attempts = attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._sleep = sleep
        self._max_bytes = max_bytes
        self.retries = 0  # for stats / benchmarks

    async def __aenter__(self) -> Downloader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    # ------------------------------------------------------------------ fetching

    async def fetch(self, url: str, rel_path: str, *, output_index: int, label: str) -> DownloadRecord:
        """Download `url` to `rel_path` (under base_dir) atomically; DownloadError/UnsafePathError if not."""
        if not url.startswith(("http://", "https://")):
            raise DownloadError(f"output {label!r}: not an http(s) URL, nothing to download")
        dest = await asyncio.to_thread(prepare_output_path, self.base_dir, rel_path)
        async with self._sem:
            cap = _TotalCap(self._total_timeout)
            try:
                async with asyncio.timeout(None) as timeout:
                    cap.bind(timeout)
                    return await self._attempts_of(url, rel_path, dest, cap, output_index=output_index, label=label)
            except TimeoutError:
                if not timeout.expired():
                    raise
                raise DownloadError(
                    f"download of {_describe(url)} did not finish within {cap.allowed():.3g} s "
                    "(the total time cap of one download)"
                ) from None

    async def _attempts_of(
        self, url: str, rel_path: str, dest: Path, cap: _TotalCap, *, output_index: int, label: str
    ) -> DownloadRecord:
        last: _Retryable | None = None
        for attempt in range(self._attempts):
            if last is not None:
                delay = min(self._max_backoff, self._backoff * 2 ** (attempt - 1))
                delay = random.uniform(delay / 2, delay)
                if last.retry_after is not None:
                    delay = min(max(delay, last.retry_after), self._max_backoff * 3)
                self.retries += 1
                await self._sleep(delay)
            try:
                return await self._fetch_once(url, rel_path, dest, cap, output_index=output_index, label=label)
            except _Retryable as e:
                last = e
        assert last is not None
        raise DownloadError(f"download of {_describe(url)} failed after {self._attempts} attempts: {last}") from None

    async def _fetch_once(
        self, url: str, rel_path: str, dest: Path, cap: _TotalCap, *, output_index: int, label: str
    ) -> DownloadRecord:
        where = _describe(url)
        try:
            async with self._client.stream("GET", url) as resp:
                status = resp.status_code
                if status == 429 or status == 408 or status >= 500:
                    raise _Retryable(f"HTTP {status} from {where}", _retry_after(resp.headers.get("retry-after")))
                if status != 200:
                    raise DownloadError(f"download of {where} failed: HTTP {status}")
                final_rel = rel_path
                if not PurePosixPath(rel_path).suffix:
                    ext = ext_for(resp.headers.get("content-type"), url)
                    if ext:
                        final_rel = rel_path + ext
                        dest = await asyncio.to_thread(prepare_output_path, self.base_dir, final_rel)
                expected = resp.headers.get("content-length")
                if expected is not None and expected.isdigit():
                    cap.grow(int(expected))
                return await self._write_stream(
                    resp, dest, cap, url=url, expected=expected, output_index=output_index, label=label
                )
        except httpx.TransportError as e:
            raise _Retryable(f"{e.__class__.__name__} from {where}") from None

    async def _write_stream(
        self,
        resp: httpx.Response,
        dest: Path,
        cap: _TotalCap,
        *,
        url: str,
        expected: str | None,
        output_index: int,
        label: str,
    ) -> DownloadRecord:
        tmp = dest.parent / _temp_name(dest.name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(tmp, flags, 0o644)
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in resp.aiter_bytes(_CHUNK):
                    size += len(chunk)
                    if self._max_bytes is not None and size > self._max_bytes:
                        raise DownloadError(f"download of {_describe(url)} exceeds {self._max_bytes} bytes")
                    h.update(chunk)
                    f.write(chunk)
                    cap.grow(size)
                if expected is not None and expected.isdigit() and int(expected) != size:
                    raise _Retryable(f"short body from {_describe(url)}: {size} of {expected} bytes")
                f.flush()
                await asyncio.to_thread(os.fsync, f.fileno())
            await asyncio.to_thread(self._commit, tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return DownloadRecord(
            output_index=output_index,
            label=label,
            url=url,
            path=dest.relative_to(self.base_dir.resolve()).as_posix(),
            size=size,
            sha256=h.hexdigest(),
        )

    @staticmethod
    def _commit(tmp: Path, dest: Path) -> None:
        os.replace(tmp, dest)
        fsync_dir(dest.parent)

    # ------------------------------------------------------------------ text outputs and verification

    def write_text(self, rel_path: str, text: str, *, output_index: int, label: str, url: str = "") -> DownloadRecord:
        """Write a text output to `rel_path` atomically (UTF-8) and return its record."""
        dest = prepare_output_path(self.base_dir, rel_path)
        data = text.encode("utf-8")
        tmp = dest.parent / _temp_name(dest.name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(tmp, flags, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._commit(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return DownloadRecord(
            output_index=output_index,
            label=label,
            url=url,
            path=dest.relative_to(self.base_dir.resolve()).as_posix(),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    def verify(self, record: DownloadRecord) -> bool:
        """True if the recorded file is still there, inside base_dir, with the recorded size and sha256."""
        try:
            path = safe_output_path(self.base_dir, record.path)
            st = path.lstat()
        except (UnsafePathError, OSError):
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size != record.size:
            return False
        try:
            size, digest = _sha256_file(path)
        except OSError:
            return False
        return size == record.size and digest == record.sha256
