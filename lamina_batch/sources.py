"""A matrix source given by https:// URL (a published Google Sheet's CSV export, say): fetched once per invocation
with the output-download machinery (`downloads.Downloader`: no Lamina credentials, outside the API's rate limiter,
the download size cap, retries on 5xx), following https redirects only and at most 5, into a local copy whose
sha256 the manifest can record. Callers fetch once and hand the localized Pipeline to everything else.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import httpx

from lamina_batch.downloads import Downloader
from lamina_batch.errors import DownloadError, MatrixError, Problem
from lamina_batch.models import Pipeline
from lamina_batch.rows import display_path, source_name
from lamina_batch.workbook import SUFFIXES

MAX_REDIRECTS = 5

__all__ = ["MAX_REDIRECTS", "FetchedSource", "fetch_source", "localize", "localize_async"]


@dataclass(frozen=True)
class FetchedSource:
    """A fetched matrix source: where it came from, the local copy, and its size and sha256 (for the manifest,
    so `plan` can say when the sheet changed since the last run)."""

    url: str
    path: Path
    size: int
    sha256: str


async def _https_only(request: httpx.Request) -> None:
    if request.url.scheme != "https":
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
    if key == "csv":
        local = dataclasses.replace(spec, csv=fetched.path)
    else:
        local = dataclasses.replace(spec, xlsx=fetched.path)
    return dataclasses.replace(pipeline, matrix=local), fetched


def localize(
    pipeline: Pipeline, folder: Path, *, transport: httpx.AsyncBaseTransport | None = None
) -> tuple[Pipeline, FetchedSource | None]:
    """`localize_async` for callers outside an event loop (validate, plan)."""
    if pipeline.matrix.url is None:
        return pipeline, None
    return asyncio.run(localize_async(pipeline, folder, transport=transport))
