"""Tests for lamina_batch.sources: an https:// matrix source fetched once, like an output download."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from lamina_batch.errors import MatrixError
from lamina_batch.matrix import expand_runs, validate_pipeline
from lamina_batch.models import Pipeline
from lamina_batch.sources import MAX_REDIRECTS, localize
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
