"""The real `lamina-batch` process at the edges of a run (issue 15): flags that mean what they say, pasteable hints,
scripts' JSON, a closed stdout, CI progress lines and GitHub annotations, empty batches, servers that cannot be
used, and `status` after failed downloads."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import assert_exactly_once, cli_env, run_cli, start_cli, wait_for, write_pipeline

from lamina_batch.emulator import Emulator
from lamina_batch.emulator.config import Faults


def lb(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`lamina-batch ARGS` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "lamina_batch", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


# --------------------------------------------------------------------------- flags mean what they say


def test_shard_with_an_explicit_manifest_uses_it_as_given_and_merges(tmp_path: Path, emulator: Emulator) -> None:
    """`--shard I/N --manifest PATH` writes PATH itself (no suffix), so `merge` of those paths works."""
    pipeline = write_pipeline(tmp_path, 6, banner=False)
    env = cli_env(emulator)
    paths = [tmp_path / f"s{i}.sqlite" for i in (1, 2)]
    for i, path in enumerate(paths, 1):
        res = run_cli(pipeline, env, "--shard", f"{i}/2", "--manifest", str(path))
        assert res.returncode == 0, res.stderr
        assert path.is_file()
    assert not list(tmp_path.glob("*shard*"))
    merged = lb("merge", *map(str, paths), "-o", str(tmp_path / "all.sqlite"), env=env)
    assert merged.returncode == 0, merged.stderr
    assert "6 runs" in merged.stdout
    assert_exactly_once(emulator, 6)


def test_the_hint_after_failed_runs_pastes_with_the_flags_used(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """The `lamina-batch status ...` hint carries --manifest and --shard; run as printed, it finds the batch."""
    emu = make_emulator(faults=Faults(p_fail=1.0))
    pipeline = write_pipeline(tmp_path, 4, banner=False)
    env = cli_env(emu)
    manifest = tmp_path / "my manifest.sqlite"
    res = run_cli(pipeline, env, "--manifest", str(manifest), "--shard", "1/2")
    assert res.returncode == 1
    hint = res.stderr.split("`lamina-batch ", 1)[1].split("`", 1)[0]
    assert "--manifest" in hint
    assert "--shard 1/2" in hint
    pasted = lb(*shlex.split(hint), env=env)
    assert pasted.returncode == 1, pasted.stderr
    assert "failures" in pasted.stdout


def test_run_dry_run_says_use_plan(tmp_path: Path, emulator: Emulator) -> None:
    """`run --dry-run` is answered with one line pointing at `plan`, exit 2, nothing sent."""
    pipeline = write_pipeline(tmp_path, 2, banner=False)
    res = lb("run", str(pipeline), "--dry-run", env=cli_env(emulator))
    assert res.returncode == 2
    assert "lamina-batch plan" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert emulator.stats.starts == 0


# --------------------------------------------------------------------------- scripts


def test_status_and_validate_json_have_the_tables_fields(tmp_path: Path, emulator: Emulator) -> None:
    """`status --json` has the planned count, per-step counts and failures; `validate --json` rows/items/runs and
    the subset `--rows/--limit` picked."""
    pipeline = write_pipeline(tmp_path, 3)
    env = cli_env(emulator)
    assert run_cli(pipeline, env).returncode == 0
    st = lb("status", str(pipeline), "--json", env=env)
    assert st.returncode == 0, st.stderr
    data = json.loads(st.stdout)
    assert data["planned"] == 6
    assert data["steps"] == {"hero": {"completed": 3}, "banner": {"completed": 3}}
    assert data["failures"] == []
    assert data["download_failures"] == []
    va = lb("validate", str(pipeline), "--json", env=env)
    assert va.returncode == 0, va.stderr
    assert json.loads(va.stdout) | {"pipeline": None} == {
        "pipeline": None,
        "valid": True,
        "apps_checked": False,
        "rows": 3,
        "items": 3,
        "steps": 2,
        "runs": 6,
        "selected_items": 3,
        "selected_runs": 6,
        "warnings": [],
    }
    subset = json.loads(lb("validate", str(pipeline), "--json", "--limit", "1", env=env).stdout)
    assert (subset["items"], subset["selected_items"], subset["selected_runs"]) == (3, 1, 2)


def test_plan_json_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """`plan --json | head -1`: the reader goes away after one line; no "internal error", exit 0."""
    pipeline = write_pipeline(tmp_path, 400)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lamina_batch", "plan", str(pipeline), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert proc.stdout.readline().strip() == "{"
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0, err
    assert "internal error" not in err
    assert "Traceback" not in err


def test_report_to_stdout_and_html_embed(tmp_path: Path, emulator: Emulator) -> None:
    """`report -o -` writes any format to stdout; `--embed` inlines the gallery's images; the folder the run
    wrote to (`--output-dir`) is the one the report finds, not the pipeline's."""
    pipeline = write_pipeline(tmp_path, 2, banner=False, download=True)
    env = cli_env(emulator)
    elsewhere = tmp_path / "elsewhere"
    assert run_cli(pipeline, env, "--output-dir", str(elsewhere)).returncode == 0
    for fmt in ("csv", "jsonl", "markdown", "junit", "html"):
        res = lb("report", str(pipeline), "--format", fmt, "-o", "-", env=env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip(), fmt
    assert not (tmp_path / "-").exists()
    assert not list(tmp_path.glob(".lamina-report-*"))
    page = lb("report", str(pipeline), "-f", "html", "-o", "-", "--embed", env=env, cwd=tmp_path).stdout
    assert page.count('src="data:image/png;base64,') == 2
    linked = lb("report", str(pipeline), "-f", "html", "-o", str(tmp_path / "g.html"), env=env)
    assert linked.returncode == 0, linked.stderr
    assert "elsewhere/out/S000/hero.png" in (tmp_path / "g.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- empty batches


@pytest.mark.parametrize("case", ["where", "header_only"])
def test_an_empty_batch_warns_on_validate_and_refuses_to_run(tmp_path: Path, emulator: Emulator, case: str) -> None:
    """A `where` that keeps no row, or a CSV with a header and no rows: validate warns (exit 0), run exits 2
    "nothing to run" with nothing sent, and `--allow-empty` makes it exit 0."""
    if case == "where":
        pipeline = write_pipeline(tmp_path, 2, banner=False)
        text = pipeline.read_text(encoding="utf-8").replace("  key: sku\n", "  key: sku\n  where: row.sku == 'none'\n")
    else:
        pipeline = write_pipeline(tmp_path, 2, banner=False)
        (tmp_path / "rows.csv").write_text("sku,name,colour\n", encoding="utf-8")
        head, _, rest = pipeline.read_text(encoding="utf-8").partition("  rows:\n")
        text = head + "  csv: rows.csv\n" + rest[rest.index("steps:") :]
    pipeline.write_text(text, encoding="utf-8")
    env = cli_env(emulator)
    va = lb("validate", str(pipeline), env=env)
    assert va.returncode == 0, va.stderr
    assert "warning:" in va.stderr
    assert "nothing to run" in va.stderr
    res = run_cli(pipeline, env)
    assert res.returncode == 2
    assert "nothing to run" in res.stderr
    assert "--allow-empty" in res.stderr
    assert run_cli(pipeline, env, "--allow-empty").returncode == 0
    assert emulator.stats.starts == 0


# --------------------------------------------------------------------------- CI logs


def test_progress_lines_come_on_a_timer_before_any_run_finishes(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """Off a terminal, `run --progress-interval` prints a progress line while runs are still in flight (done 0),
    naming in-flight and queued counts, before the first run finishes."""
    emu = make_emulator(duration=(2.0, 2.0))
    pipeline = write_pipeline(tmp_path, 4, banner=False, concurrency=2)
    res = subprocess.run(
        [sys.executable, "-m", "lamina_batch", "run", str(pipeline), "--progress-interval", "0.2"],
        env=cli_env(emu),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "hero 0/4 done (0 failed), 2 in flight, 2 queued" in res.stderr


def test_github_step_summary_and_annotations(tmp_path: Path, make_emulator: Callable[..., Emulator]) -> None:
    """With GITHUB_STEP_SUMMARY set, `run` appends its markdown summary without any flag, counting runs never
    started; on GitHub Actions failed steps become ::warning and spec errors ::error file=...,line=...."""
    emu = make_emulator(faults=Faults(p_fail=1.0))
    pipeline = write_pipeline(tmp_path, 3, banner=False)
    summary = tmp_path / "summary.md"
    env = cli_env(emu, GITHUB_STEP_SUMMARY=str(summary), GITHUB_ACTIONS="true")
    res = run_cli(pipeline, env, "--max-starts", "1")
    assert res.returncode == 3, res.stderr
    text = summary.read_text(encoding="utf-8")
    assert "**2 planned runs were never started**" in text
    assert "::warning::" in res.stdout
    assert "hero" in res.stdout
    bad = pipeline.read_text(encoding="utf-8").replace("{{ row.name }}", "{{ row.nme }}")
    pipeline.write_text(bad, encoding="utf-8")
    res = run_cli(pipeline, env)
    assert res.returncode == 2
    assert f"::error file={pipeline.name}" in res.stdout or "::error file=" in res.stdout
    assert ",line=" in res.stdout


# --------------------------------------------------------------------------- servers that cannot be used


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Answer(http.server.BaseHTTPRequestHandler):
    """A server that is not the API: a redirect, or a page of HTML."""

    mode = "html"

    def do_GET(self) -> None:
        if self.mode == "redirect":
            self.send_response(302)
            self.send_header("Location", "https://elsewhere.example/v1/apps")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"<html><body>Welcome</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_the_api() -> Iterator[Callable[[str], str]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(mode: str) -> str:
        handler = type("Handler", (_Answer,), {"mode": mode})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.mark.parametrize("case", ["refused", "redirect", "html"])
def test_a_server_that_cannot_be_used_exits_2_naming_the_base_url(
    tmp_path: Path, emulator: Emulator, not_the_api: Callable[[str], str], case: str
) -> None:
    """Connection refused, a redirect, or a reply that is not the API's, before anything started: exit 2, one
    line naming the base URL (userinfo masked) and what to check; no manifest is made."""
    if case == "refused":
        base = f"http://user:secret@127.0.0.1:{_closed_port()}"
    else:
        base = not_the_api(case).replace("http://", "http://user:secret@")
    pipeline = write_pipeline(tmp_path, 2, banner=False)
    res = run_cli(pipeline, cli_env(emulator, LAMINA_BASE_URL=base))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "secret" not in res.stderr
    assert "http://***@127.0.0.1:" in lines[0]
    assert "LAMINA_BASE_URL" in lines[0]
    assert not (tmp_path / "pipeline.lamina.sqlite").exists()


# --------------------------------------------------------------------------- status after failed downloads


def test_status_exits_as_the_run_did_after_failed_downloads(tmp_path: Path, emulator: Emulator) -> None:
    """A run whose download failed exits 1; `status` then exits 1 too and lists the download failure; once a
    resume fetches the file, both exit 0."""
    pipeline = write_pipeline(tmp_path, 2, banner=False, download=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "S000").write_text("a file where a folder should be", encoding="utf-8")
    env = cli_env(emulator)
    res = run_cli(pipeline, env)
    assert res.returncode == 1
    assert "1 downloads failed" in res.stderr
    st = lb("status", str(pipeline), env=env)
    assert st.returncode == 1, st.stdout
    assert "download failures (1" in st.stdout
    assert "S000" in st.stdout
    (tmp_path / "out" / "S000").unlink()
    assert run_cli(pipeline, env).returncode == 0
    assert lb("status", str(pipeline), env=env).returncode == 0
    assert_exactly_once(emulator, 2)


def test_the_interrupted_summary_counts_the_whole_plan(tmp_path: Path, make_emulator: Callable[..., Emulator]) -> None:
    """A SIGINT mid-batch: the final line counts every planned run (48), the ones never started included."""
    emu = make_emulator(duration=(3.0, 3.0))
    pipeline = write_pipeline(tmp_path, 24, concurrency=2)
    proc = start_cli(pipeline, cli_env(emu))
    wait_for(lambda: emu.stats.starts >= 2, 20, "2 starts")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    line = next(x for x in err.splitlines() if "Interrupted" in x)
    assert line.startswith("crash: 48 runs: ")
    assert "not started" in line


def _self_signed_server_context(tmp_path: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


def test_a_tls_verification_failure_exits_2_and_is_not_retried(tmp_path: Path, emulator: Emulator) -> None:
    """An https base URL whose certificate is not trusted: exit 2 with one line saying so (nothing started),
    after a single connection: a verification failure is not transient."""
    context = _self_signed_server_context(tmp_path)
    accepted: list[int] = []

    class Server(http.server.ThreadingHTTPServer):
        def get_request(self) -> tuple[socket.socket, object]:
            sock, addr = super().get_request()
            accepted.append(1)
            return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    server = Server(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pipeline = write_pipeline(tmp_path, 2, banner=False)
        base = f"https://127.0.0.1:{server.server_address[1]}"
        res = run_cli(pipeline, cli_env(emulator, LAMINA_BASE_URL=base))
    finally:
        server.shutdown()
        server.server_close()
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "TLS certificate verification failed" in res.stderr
    assert base in res.stderr
    assert len(accepted) == 1


def test_a_newline_in_the_base_url_is_one_line_exit_2(tmp_path: Path, emulator: Emulator) -> None:
    """LAMINA_BASE_URL with a newline in it: one line naming the variable, exit 2, never an internal error."""
    pipeline = write_pipeline(tmp_path, 2, banner=False)
    res = run_cli(pipeline, cli_env(emulator, LAMINA_BASE_URL=emulator.base_url + "\nX-Evil: 1"))
    assert res.returncode == 2
    assert "LAMINA_BASE_URL" in res.stderr
    assert "internal error" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_the_markdown_report_of_a_stopped_run_counts_runs_never_started(tmp_path: Path, emulator: Emulator) -> None:
    """`--max-starts 2 --report markdown=...` on 5 runs: the summary says 3 were never started (not "all done")."""
    pipeline = write_pipeline(tmp_path, 5, banner=False)
    report = tmp_path / "summary.md"
    res = run_cli(pipeline, cli_env(emulator), "--max-starts", "2", "--report", f"markdown={report}")
    assert res.returncode == 3, res.stderr
    assert "**3 planned runs were never started**" in report.read_text(encoding="utf-8")
