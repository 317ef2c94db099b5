"""A matrix source given by https:// URL (a published Google Sheet's CSV export, say): fetched once per invocation
with the output-download machinery (`downloads.Downloader`: no Lamina credentials, outside the API's rate limiter,
the download size cap, retries on 5xx), following https redirects only and at most 5, into a local copy whose
sha256 the manifest can record. Callers fetch once and hand the localized Pipeline to everything else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import tempfile
import threading
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from lamina_batch.downloads import Downloader
from lamina_batch.errors import DownloadError, MatrixError, Problem
from lamina_batch.models import Pipeline
from lamina_batch.rows import display_path, source_name
from lamina_batch.workbook import SUFFIXES

MAX_REDIRECTS = 5
# The manifest meta key holding the sha256 of the sheet the last run read (never the URL: it may carry a token).
SOURCE_SHA_META = "matrix_source_sha256"
T = TypeVar("T")

__all__ = [
    "MAX_REDIRECTS",
    "SOURCE_SHA_META",
    "FetchedSource",
    "fetch_for_invocation",
    "fetch_source",
    "is_loopback_http",
    "localize",
    "localize_async",
]


@dataclass(frozen=True)
class FetchedSource:
    """A fetched matrix source: where it came from, the local copy, and its size and sha256 (for the manifest,
    so `plan` can say when the sheet changed since the last run)."""

    url: str
    path: Path
    size: int
    sha256: str


def is_loopback_http(url: str) -> bool:
    """An http:// URL on this machine (127.0.0.0/8, ::1, localhost). Plain http is accepted there only: the
    bytes never leave the machine, so nothing on the way can read or change them (a local mirror, the tests)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


async def _https_only(request: httpx.Request) -> None:
    if request.url.scheme != "https" and not is_loopback_http(str(request.url)):
        raise DownloadError(f"refused a redirect to {request.url.scheme}:// (only https:// is followed)")


async def fetch_source(
    url: str,
    folder: Path,
    name: str,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    max_bytes: int | None = 2 * 1024**3,
    read_timeout: float = 120.0,
) -> FetchedSource:
    """Fetch `url` to `folder/name`; DownloadError (or httpx.HTTPError for too many redirects) when it cannot."""
    if transport is None:
        from lamina_batch.transport import default_transport  # the project's proxy rules, as for the API

        transport = default_transport(url, 1)
    client = httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(read_timeout, connect=15.0),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        event_hooks={"request": [_https_only]},
    )
    async with client, Downloader(folder, concurrency=1, client=client, max_bytes=max_bytes) as downloader:
        record = await downloader.fetch(url, name, output_index=0, label="matrix source")
    return FetchedSource(url=url, path=folder / record.path, size=record.size, sha256=record.sha256)


def _local_name(pipeline: Pipeline) -> str:
    if pipeline.matrix.csv is not None or "csv" in pipeline.matrix.lines:
        return "matrix-source.csv"
    suffix = PurePosixPath(urlsplit(pipeline.matrix.url or "").path).suffix.lower()
    # without a telling suffix (an export URL) the reader sniffs the format from the bytes
    return "matrix-source" + (suffix if suffix in SUFFIXES else ".workbook")


async def localize_async(
    pipeline: Pipeline, folder: Path, *, transport: httpx.AsyncBaseTransport | None = None
) -> tuple[Pipeline, FetchedSource | None]:
    """The pipeline with its https:// source replaced by a local copy fetched into `folder` (which the caller
    keeps for the invocation), and what was fetched; a pipeline without a URL source comes back as it is.
    Raises MatrixError naming the pipeline line when the fetch fails."""
    spec = pipeline.matrix
    if spec.url is None or spec.csv is not None or spec.xlsx is not None:
        return pipeline, None
    key = "csv" if "csv" in spec.lines else "xlsx"
    try:
        fetched = await fetch_source(spec.url, folder, _local_name(pipeline), transport=transport)
    except (DownloadError, httpx.HTTPError) as e:
        reason = str(e) if isinstance(e, DownloadError) else f"{type(e).__name__}: {e}"
        where = Problem(
            f"cannot fetch {source_name(spec)}: {reason}",
            file=display_path(pipeline.path),
            line=spec.lines.get(key),
            path=f"matrix.{key}",
        )
        raise MatrixError(where) from None
    if key == "csv" and _looks_like_html(fetched.path):
        where = Problem(
            f"{source_name(spec)} answered with a web page, not CSV",
            file=display_path(pipeline.path),
            line=spec.lines.get(key),
            path=f"matrix.{key}",
            hint="publish the sheet to the web as CSV (File > Share > Publish to web) and use that link",
        )
        raise MatrixError(where)
    if key == "csv":
        local = dataclasses.replace(spec, csv=fetched.path)
    else:
        local = dataclasses.replace(spec, xlsx=fetched.path)
    return dataclasses.replace(pipeline, matrix=local), fetched


def _looks_like_html(path: Path) -> bool:
    """A sign-in or error page where a sheet was expected (an unpublished Google Sheet answers 200 with one)."""
    with path.open("rb") as fh:
        head = fh.read(512).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<!doctype html", b"<html"))


def localize(
    pipeline: Pipeline, folder: Path, *, transport: httpx.AsyncBaseTransport | None = None
) -> tuple[Pipeline, FetchedSource | None]:
    """`localize_async` for blocking callers (validate, plan, run's local checks); inside a running event loop
    (`run_batch_async`) the fetch runs on a thread of its own."""
    if pipeline.matrix.url is None:
        return pipeline, None
    return _blocking(lambda: localize_async(pipeline, folder, transport=transport))


def fetch_for_invocation(pipeline: Pipeline, *, transport: httpx.AsyncBaseTransport | None = None) -> Pipeline:
    """The pipeline with its URL source fetched once, into a private temporary folder that lives as long as the
    returned pipeline's matrix (removed when it is freed, or at exit), and `matrix.source_sha256` set. A
    pipeline without a URL source, or already fetched, comes back as it is. MatrixError when it cannot."""
    spec = pipeline.matrix
    if spec.url is None or spec.csv is not None or spec.xlsx is not None:
        return pipeline
    folder = tempfile.TemporaryDirectory(prefix="lamina-batch-sheet-")
    try:
        local, fetched = localize(pipeline, Path(folder.name), transport=transport)
    except BaseException:
        folder.cleanup()
        raise
    assert fetched is not None  # a URL source was fetched or raised
    matrix = dataclasses.replace(local.matrix, source_sha256=fetched.sha256)
    weakref.finalize(matrix, folder.cleanup)
    return dataclasses.replace(local, matrix=matrix)


def _blocking(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    result: list[T] = []
    error: list[BaseException] = []

    def work() -> None:
        try:
            result.append(asyncio.run(main()))
        except BaseException as e:
            error.append(e)

    thread = threading.Thread(target=work, name="lamina-batch-sheet")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
