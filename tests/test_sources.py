"""Tests for lamina_batch.sources: an https:// matrix source fetched once, like an output download."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import cli_env, manifest_path, read_only

from lamina_batch.emulator import Emulator
from lamina_batch.errors import MatrixError
from lamina_batch.matrix import expand_runs, validate_pipeline
from lamina_batch.models import Pipeline
from lamina_batch.sources import MAX_REDIRECTS, is_loopback_http, localize
from lamina_batch.spec import parse_pipeline_text

SHEET = b"sku,name\r\nA1,Mug\r\nA2,Bowl\r\n"
URL = "https://docs.example.com/spreadsheets/d/abc/export?format=csv&token=secret"


def _pipeline(tmp_path: Path, url: str = URL, key: str = "csv") -> Pipeline:
    text = (
        f"version: 1\nmatrix:\n  {key}: {url!r}\n  key: sku\nsteps:\n  - id: s\n    app: a\n"
        "    inputs: {P: '{{ row.name }}'}\n"
    )
    return parse_pipeline_text(text, tmp_path / "p.yaml")


class Server:
    """A MockTransport handler that serves SHEET at URL, counts requests and can redirect."""

    def __init__(self, redirects: list[str] | None = None, body: bytes = SHEET) -> None:
        self.redirects = redirects or []
        self.body = body
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        hop = len(self.seen) - 1
        if hop < len(self.redirects):
            return httpx.Response(302, headers={"location": self.redirects[hop]})
        return httpx.Response(200, content=self.body, headers={"content-type": "text/csv"})


def test_a_url_csv_is_fetched_once_with_its_sha256(tmp_path: Path) -> None:
    """One GET, no Lamina credentials; the localized pipeline plans from the local copy."""
    server = Server()
    pipeline, fetched = localize(_pipeline(tmp_path), tmp_path / "fetch", transport=httpx.MockTransport(server))
    assert fetched is not None
    assert (fetched.size, fetched.sha256) == (len(SHEET), hashlib.sha256(SHEET).hexdigest())
    assert fetched.path.read_bytes() == SHEET
    assert len(server.seen) == 1
    assert "authorization" not in server.seen[0].headers
    assert [ip.runs[0].inputs["P"] for ip in expand_runs(pipeline)] == ["Mug", "Bowl"]
    assert validate_pipeline(pipeline).rows == 2


def test_https_redirects_are_followed_up_to_five(tmp_path: Path) -> None:
    """Five https redirects are fine; a sixth is refused with one line at the pipeline's matrix.csv."""
    hops = [f"https://cdn{i}.example.com/s.csv" for i in range(MAX_REDIRECTS)]
    _, fetched = localize(_pipeline(tmp_path), tmp_path / "a", transport=httpx.MockTransport(Server(hops)))
    assert fetched is not None
    too_many = Server([*hops, "https://cdn9.example.com/s.csv"])
    with pytest.raises(MatrixError) as info:
        localize(_pipeline(tmp_path), tmp_path / "b", transport=httpx.MockTransport(too_many))
    (problem,) = info.value.problems
    assert (problem.line, problem.path) == (3, "matrix.csv")
    assert "TooManyRedirects" in problem.message
    assert "secret" not in str(info.value)  # the query string (often a token) stays out of messages


def test_a_redirect_to_plain_http_is_refused(tmp_path: Path) -> None:
    """https -> http is never followed."""
    server = Server(["http://docs.example.com/s.csv"])
    with pytest.raises(MatrixError, match=r"refused a redirect to http://"):
        localize(_pipeline(tmp_path), tmp_path / "f", transport=httpx.MockTransport(server))
    assert len(server.seen) == 1


def test_a_404_is_one_line(tmp_path: Path) -> None:
    """A sheet that is not there is exit 2 with the status."""
    transport = httpx.MockTransport(lambda r: httpx.Response(404))
    with pytest.raises(
        MatrixError, match=r"p\.yaml:3: matrix\.csv: cannot fetch https://docs\.example\.com/.*HTTP 404"
    ):
        localize(_pipeline(tmp_path), tmp_path / "f", transport=transport)


def test_an_unfetched_url_is_not_read(tmp_path: Path) -> None:
    """Reading rows of a URL source that was never fetched says to fetch it first."""
    with pytest.raises(MatrixError, match="has not been fetched"):
        validate_pipeline(_pipeline(tmp_path))


def test_a_url_workbook_is_fetched_too(tmp_path: Path) -> None:
    """`xlsx: https://...` is fetched the same way and read as a workbook."""
    book = (Path(__file__).parent / "fixtures" / "catalogues" / "products.ods").read_bytes()
    transport = httpx.MockTransport(Server(body=book))
    pipeline, fetched = localize(
        _pipeline(tmp_path, "https://x.example.com/export?format=ods", "xlsx"), tmp_path / "f", transport=transport
    )
    assert fetched is not None
    assert fetched.path.name == "matrix-source.workbook"
    assert validate_pipeline(pipeline).rows == 2


def test_a_local_pipeline_is_left_alone(tmp_path: Path) -> None:
    """Without a URL source nothing is fetched."""
    (tmp_path / "p.csv").write_bytes(SHEET)
    p = _pipeline(tmp_path, "p.csv")
    assert localize(p, tmp_path / "f") == (p, None)


# ----------------------------------------------------------------------------- through the CLI, on loopback


class SheetServer:
    """A plain-http server on 127.0.0.1 standing in for a published sheet: `/sheet.csv` serves `body` (which a
    test may change), `/page` an HTML sign-in page, anything else 404; it counts the requests per path."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.hits: Counter[str] = Counter()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits[self.path] += 1
                if self.path == "/sheet.csv":
                    self._send(200, owner.body, "text/csv")
                elif self.path == "/page":
                    self._send(200, b"<!DOCTYPE html><html><body>Sign in</body></html>", "text/html")
                else:
                    self._send(404, b"not found", "text/plain")

            def _send(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def sheet_server() -> Iterator[SheetServer]:
    server = SheetServer(b"sku,name\r\nA1,Mug\r\nA2,Bowl\r\n")
    yield server
    server.close()


def url_pipeline(folder: Path, url: str) -> Path:
    path = folder / "pipeline.yaml"
    path.write_text(
        f"version: 1\nmatrix:\n  csv: {url}\n  key: sku\nsteps:\n  - id: hero\n    app: app_7Hk2\n"
        "    inputs:\n      Prompt: 'Photo of {{ row.name }}'\nrun:\n  rate_limit: 100/s\n  poll_interval: 1s\n",
        encoding="utf-8",
    )
    return path


def lamina(pipeline: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lamina_batch", *args[:1], str(pipeline), *args[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_sheet_by_url_is_fetched_once_per_command_and_plan_says_when_it_changed(
    tmp_path: Path, emulator: Emulator, sheet_server: SheetServer
) -> None:
    """validate, plan and run each fetch the sheet once; run records its sha256 in the manifest; plan then says
    whether the sheet changed since, and the changed row is the only one run again."""
    pipeline = url_pipeline(tmp_path, sheet_server.url("/sheet.csv"))
    env = cli_env(emulator)
    checked = lamina(pipeline, env, "validate")
    assert checked.returncode == 0, checked.stderr
    assert "2 rows" in checked.stdout
    assert sheet_server.hits["/sheet.csv"] == 1
    first = lamina(pipeline, env, "plan")
    assert "no run has read it yet" in first.stdout
    ran = lamina(pipeline, env, "run", "--no-progress")
    assert ran.returncode == 0, ran.stderr
    assert sheet_server.hits["/sheet.csv"] == 3
    with read_only(manifest_path(pipeline)) as db:
        (sha,) = db.execute("SELECT value FROM meta WHERE key = 'matrix_source_sha256'").fetchone()
    assert sha == hashlib.sha256(sheet_server.body).hexdigest()
    same = lamina(pipeline, env, "plan")
    assert "unchanged since the last run" in same.stdout
    sheet_server.body = b"sku,name\r\nA1,Mug\r\nA2,Big bowl\r\n"
    changed = lamina(pipeline, env, "plan")
    assert "changed since the last run" in changed.stdout
    assert "would start 1 runs" in changed.stdout
    assert emulator.stats.starts == 2


@pytest.mark.parametrize(
    ("path", "message"),
    [("/missing.csv", "HTTP 404"), ("/page", "answered with a web page, not CSV")],
)
def test_a_sheet_that_cannot_be_read_is_one_line_exit_2(
    tmp_path: Path, emulator: Emulator, sheet_server: SheetServer, path: str, message: str
) -> None:
    """A 404 or an HTML page where the CSV should be: exit 2, one line naming the pipeline line, nothing run."""
    pipeline = url_pipeline(tmp_path, sheet_server.url(path))
    for command in ("validate", "plan", "run"):
        res = lamina(pipeline, cli_env(emulator), command)
        assert res.returncode == 2, (command, res.stderr)
        assert message in res.stderr
        assert "pipeline.yaml:3: matrix.csv" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert emulator.stats.starts == 0


def test_plain_http_is_fetched_from_loopback_only() -> None:
    """http:// is accepted for 127.0.0.0/8, ::1 and localhost (bytes that never leave the machine), not
    elsewhere."""
    assert is_loopback_http("http://127.0.0.1:8080/s.csv")
    assert is_loopback_http("http://[::1]/s.csv")
    assert is_loopback_http("http://localhost/s.csv")
    assert not is_loopback_http("http://sheets.example.com/s.csv")
    assert not is_loopback_http("https://127.0.0.1/s.csv")


def test_a_timeout_is_one_line(tmp_path: Path) -> None:
    """A sheet server that never answers in time is a MatrixError naming the line and the timeout."""

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(MatrixError, match=r"p\.yaml:3: matrix\.csv: cannot fetch .*(?i:timeout|timed out)"):
        localize(_pipeline(tmp_path), tmp_path / "f", transport=httpx.MockTransport(slow))
