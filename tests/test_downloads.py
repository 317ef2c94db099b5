"""Tests for lamina_batch.downloads: safe paths, atomic writes, hashes, verification, retries."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from drip_files import DripFiles
from helpers import (
    assert_exactly_once,
    cli_env,
    manifest_path,
    read_only,
    run_cli,
    start_cli,
    wait_for,
    wait_for_async,
    write_pipeline,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina_batch.downloads import (
    Downloader,
    ext_for,
    guess_ext,
    prepare_output_path,
    safe_output_path,
)
from lamina_batch.emulator import Emulator
from lamina_batch.errors import DownloadError, UnsafePathError
from lamina_batch.models import DownloadRecord, RunOutput

T = TypeVar("T")

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


class FakeSleep:
    """Records requested pauses instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make_downloader(
    base: Path, handler: Callable[[httpx.Request], httpx.Response], **kw: object
) -> tuple[Downloader, FakeSleep]:
    sleep = FakeSleep()
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return Downloader(base, client=client, sleep=sleep, **kw), sleep  # type: ignore[arg-type]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def leftovers(base: Path) -> list[str]:
    return sorted(p.name for p in base.rglob("*") if ".partial-" in p.name)


# --------------------------------------------------------------------------- safe_output_path


@pytest.mark.parametrize(
    ("rendered", "reason"),
    [
        ("../x.png", "'..'"),
        ("/etc/x", "absolute"),
        ("a/../../x", "'..'"),
        ("a/./x", "'.'"),
        ("a\x00b.png", "NUL"),
        ("a" * 300 + ".png", "255 bytes"),
        ("a//b.png", "empty folder"),
        ("a/b/", "empty folder"),
        ("", "empty"),
        ("..\\..\\x", "backslash"),
        ("C:/x.png", "absolute"),
        ("a\nb.png", "control"),
        ("/".join(["d" * 200] * 25), "4096"),
    ],
)
def test_safe_output_path_refuses_escapes(tmp_path: Path, rendered: str, reason: str) -> None:
    """Each kind of unsafe rendered path is refused with a message naming the path and the reason."""
    with pytest.raises(UnsafePathError) as ei:
        safe_output_path(tmp_path, rendered)
    assert reason in str(ei.value)
    assert "refused" in str(ei.value)


def test_safe_output_path_refuses_symlinked_dir_outside(tmp_path: Path) -> None:
    """A folder that is a symlink pointing outside the base is refused, and nothing is written there."""
    base = tmp_path / "base"
    outside = tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (base / "link").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="symlink"):
        safe_output_path(base, "link/x.png")
    with pytest.raises(UnsafePathError, match="symlink"):
        prepare_output_path(base, "link/sub/x.png")
    assert list(outside.iterdir()) == []


def test_safe_output_path_allows_symlink_inside_and_refuses_symlink_file(tmp_path: Path) -> None:
    """A symlinked folder staying inside the base is fine; a final name that is a symlink is refused."""
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert safe_output_path(tmp_path, "alias/x.png") == tmp_path.resolve() / "real" / "x.png"
    (tmp_path / "f.png").symlink_to("/etc/passwd")
    with pytest.raises(UnsafePathError, match="symlink"):
        safe_output_path(tmp_path, "f.png")


def test_safe_output_path_accepts_normal_paths(tmp_path: Path) -> None:
    """Ordinary nested relative paths (unicode included) resolve under the base directory."""
    p = safe_output_path(tmp_path, "out/A1/hero-1-1.png")
    assert p == tmp_path.resolve() / "out" / "A1" / "hero-1-1.png"
    assert safe_output_path(tmp_path, "ünï/café.png").name == "café.png"


def test_prepare_output_path_creates_folders(tmp_path: Path) -> None:
    """prepare_output_path creates the missing folders inside the base."""
    p = prepare_output_path(tmp_path / "new", "a/b/c.png")
    assert p.parent.is_dir()
    assert p.parent == (tmp_path / "new" / "a" / "b").resolve()


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    rendered=st.one_of(
        st.text(max_size=60),
        st.lists(st.sampled_from(["..", ".", "", "a", "link", "b/", "/", "\x00", "x.png", "é"]), max_size=8).map(
            "/".join
        ),
    )
)
def test_safe_output_path_property(tmp_path: Path, rendered: str) -> None:
    """For any rendered string, safe_output_path raises UnsafePathError or returns a path inside the base."""
    base = tmp_path / "base"
    base.mkdir(exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    if not (base / "link").is_symlink():
        (base / "link").symlink_to(outside)
    try:
        p = safe_output_path(base, rendered)
    except UnsafePathError:
        return
    resolved_base = base.resolve()
    assert p.is_absolute()
    assert p.parent.resolve().is_relative_to(resolved_base)
    assert p.resolve().is_relative_to(resolved_base)
    assert p != resolved_base


# --------------------------------------------------------------------------- extensions


def test_ext_for_content_type_then_url() -> None:
    """Content-Type wins, URL suffix is the fallback, unknown gives ''."""
    assert ext_for("image/jpeg; charset=binary", "https://x/y.png") == ".jpg"
    assert ext_for("image/webp", "https://x/y") == ".webp"
    assert ext_for("application/octet-stream", "https://x/y.GIF?sig=1") == ".gif"
    assert ext_for(None, "https://x/y.mp4") == ".mp4"
    assert ext_for(None, "https://x/y") == ""
    assert ext_for("text/plain", "https://x/y") == ".txt"
    assert ext_for(None, "https://x/y.weird-suffix") == ""


def test_guess_ext_before_download() -> None:
    """guess_ext uses the URL suffix, then the output type (images default to .png, text to .txt)."""
    out = RunOutput(id="1", label="Hero", type="image", value="https://cdn/x/img.webp", status="completed")
    assert guess_ext(out) == ".webp"
    out2 = RunOutput(id="1", label="Hero", type="image", value="https://cdn/x/img", status="completed")
    assert guess_ext(out2) == ".png"
    out3 = RunOutput(id="1", label="Caption", type="text", value="a cat", status="completed")
    assert guess_ext(out3) == ".txt"
    out4 = RunOutput(id="1", label="Clip", type="video", value=None, status="completed")
    assert guess_ext(out4) == ".mp4"


# --------------------------------------------------------------------------- fetch


def test_fetch_writes_file_with_size_and_sha256(tmp_path: Path) -> None:
    """A successful fetch writes the body atomically and records its size and sha256."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    async def go() -> DownloadRecord:
        d, _ = make_downloader(tmp_path, handler)
        async with d:
            return await d.fetch(
                "https://cdn.example/a/b.png?token=secret", "out/A1/hero.png", output_index=0, label="Hero"
            )

    rec = run(go())
    assert isinstance(rec, DownloadRecord)
    assert rec.path == "out/A1/hero.png"
    assert rec.size == len(PNG)
    assert rec.sha256 == hashlib.sha256(PNG).hexdigest()
    assert (tmp_path / "out/A1/hero.png").read_bytes() == PNG
    assert leftovers(tmp_path) == []


def test_fetch_adds_extension_from_content_type_only_when_missing(tmp_path: Path) -> None:
    """A path without extension gets one from the Content-Type; a path with one keeps it."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"jpegdata", headers={"content-type": "image/jpeg"})

    async def go() -> tuple[DownloadRecord, DownloadRecord]:
        d, _ = make_downloader(tmp_path, handler)
        async with d:
            a = await d.fetch("https://cdn/x", "noext", output_index=0, label="A")
            b = await d.fetch("https://cdn/x", "has.png", output_index=1, label="B")
            return a, b

    a, b = run(go())
    assert a.path == "noext.jpg"
    assert b.path == "has.png"


def test_fetch_broken_stream_leaves_no_partial_file(tmp_path: Path) -> None:
    """A body that breaks mid-way is retried; when every attempt breaks, no partial or final file remains."""
    calls = 0

    async def broken() -> AsyncIterator[bytes]:
        yield PNG[:1000]
        raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, content=broken())

    async def go() -> None:
        d, sleep = make_downloader(tmp_path, handler, attempts=3)
        async with d:
            with pytest.raises(DownloadError, match=r"cdn\.example/a\.png.*3 attempts"):
                await d.fetch("https://cdn.example/a.png", "out/a.png", output_index=0, label="A")
        assert len(sleep.calls) == 2

    run(go())
    assert calls == 3
    assert not (tmp_path / "out/a.png").exists()
    assert leftovers(tmp_path) == []


def test_fetch_broken_stream_keeps_previous_file(tmp_path: Path) -> None:
    """A failed re-download never damages the file already in place (rename happens only on success)."""
    (tmp_path / "a.png").write_bytes(b"old")

    async def broken() -> AsyncIterator[bytes]:
        yield b"new-partial"
        raise httpx.ReadError("reset")

    async def go() -> None:
        d, _ = make_downloader(tmp_path, lambda r: httpx.Response(200, content=broken()), attempts=1)
        async with d:
            with pytest.raises(DownloadError):
                await d.fetch("https://cdn/a.png", "a.png", output_index=0, label="A")

    run(go())
    assert (tmp_path / "a.png").read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_fetch_retries_503_then_succeeds(tmp_path: Path) -> None:
    """503 and 429 are retried after an (injected) sleep, honouring Retry-After; then the file is written."""
    answers = [
        httpx.Response(503),
        httpx.Response(429, headers={"retry-after": "7"}),
        httpx.Response(200, content=PNG),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    async def go() -> tuple[DownloadRecord, list[float]]:
        d, sleep = make_downloader(tmp_path, handler)
        async with d:
            rec = await d.fetch("https://cdn/a.png", "a.png", output_index=0, label="A")
        return rec, sleep.calls

    rec, calls = run(go())
    assert rec.size == len(PNG)
    assert len(calls) == 2
    assert calls[1] >= 7
    assert answers == []


def test_fetch_404_fails_at_once(tmp_path: Path) -> None:
    """A 404 is not retried: DownloadError naming host, path and status, without the query string."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(404)

    async def go() -> list[float]:
        d, sleep = make_downloader(tmp_path, handler)
        async with d:
            with pytest.raises(DownloadError) as ei:
                await d.fetch("https://cdn.example/gone.png?sig=SECRET", "a.png", output_index=0, label="A")
        assert "cdn.example/gone.png" in str(ei.value)
        assert "404" in str(ei.value)
        assert "SECRET" not in str(ei.value)
        return sleep.calls

    assert run(go()) == []
    assert calls == 1
    assert not (tmp_path / "a.png").exists()


def test_fetch_connect_error_retried(tmp_path: Path) -> None:
    """Connect errors are transient: retried until an answer arrives."""
    n = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal n
        n += 1
        if n == 1:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, content=b"ok")

    async def go() -> DownloadRecord:
        d, _ = make_downloader(tmp_path, handler)
        async with d:
            return await d.fetch("https://cdn/a.txt", "a.txt", output_index=0, label="A")

    rec = run(go())
    assert isinstance(rec, DownloadRecord)
    assert rec.size == 2
    assert n == 2


def test_fetch_unsafe_path_refused_before_any_request(tmp_path: Path) -> None:
    """An escaping path is refused with UnsafePathError and no request is made."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, content=b"x")

    async def go() -> None:
        d, _ = make_downloader(tmp_path / "base", handler)
        async with d:
            with pytest.raises(UnsafePathError):
                await d.fetch("https://cdn/a.png", "../escape.png", output_index=0, label="A")

    run(go())
    assert calls == 0
    assert not (tmp_path / "escape.png").exists()


def test_fetch_concurrency_limit(tmp_path: Path) -> None:
    """No more than `concurrency` downloads are in flight at once."""
    active = 0
    peak = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        yield b"data"
        active -= 1

    async def go() -> None:
        d, _ = make_downloader(tmp_path, lambda r: httpx.Response(200, content=body()), concurrency=2)
        async with d:
            await asyncio.gather(
                *(d.fetch("https://cdn/x.png", f"f{i}.png", output_index=i, label="A") for i in range(6))
            )

    run(go())
    assert 1 <= peak <= 2
    assert len(list(tmp_path.glob("f*.png"))) == 6


# --------------------------------------------------------------------------- verify and text


def test_verify_detects_missing_and_corrupt_files(tmp_path: Path) -> None:
    """verify is True for an intact file and False once it is truncated, altered or removed."""

    async def go() -> DownloadRecord:
        d, _ = make_downloader(tmp_path, lambda r: httpx.Response(200, content=PNG))
        async with d:
            return await d.fetch("https://cdn/a.png", "a.png", output_index=0, label="A")

    rec = run(go())
    assert isinstance(rec, DownloadRecord)
    d = Downloader(tmp_path)
    try:
        assert d.verify(rec)
        path = tmp_path / "a.png"
        data = bytearray(path.read_bytes())
        data[10] ^= 0xFF
        path.write_bytes(bytes(data))
        assert not d.verify(rec)  # same size, different content
        path.write_bytes(PNG[:-1])
        assert not d.verify(rec)
        path.unlink()
        assert not d.verify(rec)
    finally:
        run(d.aclose())


def test_verify_refuses_symlinked_file(tmp_path: Path) -> None:
    """A recorded file replaced by a symlink (even to identical content) does not verify."""
    base = tmp_path / "base"
    base.mkdir()
    (tmp_path / "real.txt").write_text("hello")
    d = Downloader(base)
    try:
        rec = d.write_text("t.txt", "hello", output_index=0, label="T")
        assert d.verify(rec)
        os.remove(base / "t.txt")
        (base / "t.txt").symlink_to(tmp_path / "real.txt")
        assert not d.verify(rec)
    finally:
        run(d.aclose())


def test_write_text_atomic_and_recorded(tmp_path: Path) -> None:
    """Text outputs are written as UTF-8 atomically, with size and sha256 recorded."""
    d = Downloader(tmp_path)
    try:
        rec = d.write_text("out/cap.txt", "café ☕", output_index=2, label="Caption")
        with pytest.raises(UnsafePathError):
            d.write_text("../x.txt", "x", output_index=0, label="x")
    finally:
        run(d.aclose())
    data = "café ☕".encode()
    assert (tmp_path / "out/cap.txt").read_bytes() == data
    assert rec == DownloadRecord(
        output_index=2,
        label="Caption",
        url="",
        path="out/cap.txt",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    assert leftovers(tmp_path) == []
    assert not (tmp_path.parent / "x.txt").exists()


# --------------------------------------------------------------------------- stalled servers (issue 19, item 2)


def test_a_dripping_download_ends_at_its_total_time_cap(tmp_path: Path) -> None:
    """A server that sends one byte a second (never a gap long enough for the gap timeout) is cut off by the
    total cap: DownloadError naming it, no partial file, nothing written."""

    async def go() -> None:
        with DripFiles(gap=1.0) as drip:
            async with Downloader(tmp_path, total_timeout=0.5) as dl:
                with pytest.raises(DownloadError, match=r"did not finish within 0\.5 s"):
                    await dl.fetch(f"{drip.url}/files/r1/0.png", "out/a.png", output_index=0, label="Hero")
            assert drip.requests == 1  # a cap is not retried

    run(go())
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "out" / "a.png").exists()


def test_a_cancelled_download_leaves_no_partial_file(tmp_path: Path) -> None:
    """Cancelling a fetch mid-body (what a stop does) removes its temporary file at once and records nothing."""

    async def go() -> None:
        with DripFiles(gap=1.0) as drip:
            async with Downloader(tmp_path) as dl:
                task = asyncio.create_task(
                    dl.fetch(f"{drip.url}/files/r1/0.png", "out/a.png", output_index=0, label="Hero")
                )
                await wait_for_async(lambda: leftovers(tmp_path), what="the partial file")
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

    run(go())
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "out" / "a.png").exists()


def test_the_default_total_cap_grows_with_the_announced_size(tmp_path: Path) -> None:
    """Without a set cap a download gets the base time plus its Content-Length at the default pace: a whole body
    arriving (released) completes and is recorded with its size and sha256."""

    async def go() -> DownloadRecord:
        with DripFiles(size=300_000, gap=0.01) as drip:
            async with Downloader(tmp_path) as dl:
                task = asyncio.create_task(
                    dl.fetch(f"{drip.url}/files/r1/0.png", "out/a.png", output_index=0, label="Hero")
                )
                await wait_for_async(drip.dripping.is_set, what="the body to begin")
                drip.release()
                record = await task
                assert record.sha256 == hashlib.sha256(drip.body).hexdigest()
                return record

    record = run(go())
    assert record.size == 300_000
    assert leftovers(tmp_path) == []


def test_a_total_cap_must_be_positive(tmp_path: Path) -> None:
    """A zero or negative total cap is a programming error, refused when the downloader is made."""
    with pytest.raises(ValueError, match="total_timeout"):
        Downloader(tmp_path, total_timeout=0)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stalled_download_yields_to_a_signal_and_the_resume_fetches_it(
    sig: signal.Signals, code: int, tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """The real CLI downloading from a server that drips one byte a second: SIGINT/SIGTERM ends it with 130/143
    (within the test's 20 s, not the gap timeout's 120 s), the partial file is gone and no file is recorded; the
    resume fetches the file and starts nothing again."""
    with DripFiles(gap=1.0) as drip:
        emu = make_emulator(files_base_url=drip.url)
        pipeline = write_pipeline(tmp_path, 1, banner=False, download=True)
        env = cli_env(emu)
        out = tmp_path / "out"
        proc = start_cli(pipeline, env)
        try:
            wait_for(lambda: out.exists() and leftovers(out), 60, "a partial download")
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=20)  # a hang past this is the failure
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=20)
        assert proc.returncode == code, err
        assert "Traceback" not in err
        assert leftovers(out) == []
        assert not (out / "S000" / "hero.png").exists()
        with read_only(manifest_path(pipeline)) as db:
            assert db.execute("SELECT state, downloads_json FROM runs").fetchall() == [("completed", "[]")]
        drip.release()
        final = run_cli(pipeline, env)
        assert final.returncode == 0, final.stderr
        assert (out / "S000" / "hero.png").read_bytes() == drip.body
        assert drip.requests == 2
        assert_exactly_once(emu, 1)


def test_download_timeout_flag_caps_a_dripping_download(tmp_path: Path, make_emulator: Callable[..., Emulator]) -> None:
    """`run --download-timeout 1s` against a dripping server: the download fails on its cap (exit 1, the run kept
    completed, no partial file), and a resume once the server is sound fetches it (exit 0)."""
    with DripFiles(gap=1.0) as drip:
        emu = make_emulator(files_base_url=drip.url)
        pipeline = write_pipeline(tmp_path, 1, banner=False, download=True)
        env = cli_env(emu)
        capped = run_cli(pipeline, env, "--download-timeout", "1s")
        assert capped.returncode == 1, capped.stderr
        assert "Traceback" not in capped.stderr
        assert leftovers(tmp_path) == []
        drip.release()
        final = run_cli(pipeline, env)
        assert final.returncode == 0, final.stderr
        assert (tmp_path / "out" / "S000" / "hero.png").read_bytes() == drip.body
        assert_exactly_once(emu, 1)
