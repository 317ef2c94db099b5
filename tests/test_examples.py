"""The shipped examples stay valid: every pipeline validates, and the GitHub Actions workflow is well formed and
its shell steps really work (run against the emulator)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lamina_batch.cli import main
from lamina_batch.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "examples" / "github-actions" / "lamina-batch.yml"
PIPELINES = sorted([*ROOT.glob("pipelines/*.yaml"), *ROOT.glob("examples/**/*.yaml")])
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def load_workflow() -> dict[str, Any]:
    raw: object = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    # YAML 1.1 reads the bare key `on` as the boolean True; GitHub reads it as "on"
    return {"on" if k is True else str(k): v for k, v in raw.items()}


def step_named(job: dict[str, Any], prefix: str) -> dict[str, Any]:
    matches: list[dict[str, Any]] = [s for s in job["steps"] if str(s.get("name", "")).startswith(prefix)]
    assert len(matches) == 1, f"expected one step named {prefix!r}"
    return matches[0]


@pytest.mark.parametrize("pipeline", PIPELINES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_pipeline_validates(pipeline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`lamina-batch validate` accepts every pipeline in pipelines/ and examples/ (exit 0, one summary line)."""
    assert main(["validate", str(pipeline)]) == 0, capsys.readouterr().err
    assert "valid" in capsys.readouterr().out


def test_there_are_pipelines_to_validate() -> None:
    """The glob above finds the shipped pipelines (an empty parametrisation would test nothing)."""
    names = {p.relative_to(ROOT).as_posix() for p in PIPELINES}
    assert "examples/catalogue/pipeline.yaml" in names
    assert len([n for n in names if n.startswith("pipelines/")]) >= 3


def test_workflow_has_the_structure_github_requires() -> None:
    """The workflow parses as YAML with name/on/jobs; every job has runs-on and steps that each use or run."""
    wf = load_workflow()
    assert set(wf) >= {"name", "on", "jobs"}
    assert "workflow_dispatch" in wf["on"]
    assert set(wf["jobs"]) == {"shard", "merge"}
    for job_id, job in wf["jobs"].items():
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", job_id)
        assert job["runs-on"] == "ubuntu-latest"
        assert isinstance(job["steps"], list)
        assert job["steps"]
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{job_id}: a step needs exactly one of uses/run: {step}"
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@[\w.-]+", step["uses"]), step["uses"]
    text = WORKFLOW.read_text(encoding="utf-8")
    assert text.count("${{") == text.count("}}")
    for expr in EXPR.findall(text):
        root = re.match(r"!?\(?\s*([a-z]+)", expr)
        assert root, expr
        assert root.group(1) in {"matrix", "env", "github", "secrets", "inputs", "always", "cancelled"}, expr


def test_workflow_shards_merge_and_publish() -> None:
    """A shard matrix passes --shard I/N; merge needs the shards, runs even after failures, and publishes the
    gallery, JUnit and the step summary; the cache restore prefix matches the save key."""
    wf = load_workflow()
    shard, merge = wf["jobs"]["shard"], wf["jobs"]["merge"]
    shards = shard["strategy"]["matrix"]["shard"]
    assert shards == list(range(1, len(shards) + 1))
    assert int(wf["env"]["SHARDS"]) == len(shards)
    assert shard["strategy"]["fail-fast"] is False
    run = step_named(shard, "Run shard")
    assert '--shard "${{ matrix.shard }}/$SHARDS"' in run["run"]
    assert "timeout-minutes" in run

    restore = step_named(shard, "Restore")
    save = step_named(shard, "Save")
    assert restore["uses"].startswith("actions/cache/restore@")
    assert save["uses"].startswith("actions/cache/save@")
    assert save["if"] == "always()"
    assert restore["with"]["key"] == save["with"]["key"]
    assert restore["with"]["path"] == save["with"]["path"]
    for prefix in restore["with"]["restore-keys"].splitlines():
        assert save["with"]["key"].startswith(prefix)
    assert "github.run_attempt" in save["with"]["key"]

    assert merge["needs"] in ("shard", ["shard"])
    assert "always()" in merge["if"]
    scripts = "\n".join(s.get("run", "") for s in merge["steps"])
    assert "lamina-batch merge" in scripts
    for fmt in ("html", "junit", "markdown"):
        assert f"report {fmt} " in scripts
    uploads = [s for s in merge["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert any("report/" in s["with"]["path"] for s in uploads)
    assert any("junit" in s.get("uses", "") for s in merge["steps"])
    assert "lamina-batch status" in merge["steps"][-1]["run"]


def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # how GitHub runs a `run:` step with the default shell
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_workflow_shell_steps_run_end_to_end_on_the_emulator(tmp_path: Path, emulator: Emulator) -> None:
    """The shard and merge jobs' shell steps, run as written (4 shards against one fast emulator), produce a merged
    manifest with every run completed, the gallery with its images, JUnit, and the Markdown step summary."""
    wf = load_workflow()
    workspace = tmp_path / "ws"
    shutil.copytree(ROOT / "examples" / "catalogue", workspace / "examples" / "catalogue")
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMINA_", "GITHUB_"))}
    env.update({k: str(v) for k, v in wf["env"].items()})
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["GITHUB_STEP_SUMMARY"] = str(tmp_path / "summary.md")
    # the secret's path (LAMINA_API_KEY), against a fast emulator: `--emulator` runs take seconds each
    env.update({"LAMINA_BASE_URL": emulator.base_url, "LAMINA_API_KEY": emulator.key, "EMULATOR": ""})

    run = step_named(wf["jobs"]["shard"], "Run shard")["run"]
    procs = []
    for i in wf["jobs"]["shard"]["strategy"]["matrix"]["shard"]:
        script = run.replace("${{ matrix.shard }}", str(i))
        assert "${{" not in script
        procs.append(
            subprocess.Popen(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                cwd=workspace,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err

    for step in wf["jobs"]["merge"]["steps"]:
        if "run" in step and "pip install" not in step["run"]:
            assert "${{" not in step["run"]
            done = _bash(step["run"], workspace, env)
            assert done.returncode == 0, f"{step['name']}: {done.stderr}"

    state = workspace / wf["env"]["STATE"]
    assert len(list(state.glob("batch.shard-*-of-4.lamina.sqlite"))) == 4
    report = workspace / wf["env"]["PIPELINE_DIR"] / "report"
    gallery = (report / "gallery.html").read_text(encoding="utf-8")
    images = re.findall(r'<img[^>]* src="([^"]+)"', gallery)
    assert images
    assert all((report / src).is_file() for src in images)
    assert "<testsuites" in (report / "results.xml").read_text(encoding="utf-8")
    summary = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "No failed" in summary
    assert emulator.stats.starts == 44
    assert emulator.stats.duplicate_starts() == {}
