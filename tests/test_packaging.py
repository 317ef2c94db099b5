"""The wheel: it carries the JSON Schema and works installed in a clean virtualenv, away from the source tree."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_the_schema_and_validates_a_spec_when_installed(tmp_path: Path) -> None:
    """Build the wheel, install it into a fresh venv, and validate the example with the installed command."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    wheels = list(dist.glob("lamina_batch-*.whl"))
    assert len(wheels) == 1
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheels[0])],
        check=True,
        capture_output=True,
    )
    # Dependencies come from the test environment's site-packages, added after the venv's own (a plain path
    # entry: .pth files there, such as this checkout's editable install, are not processed).
    venv_site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()] or [sysconfig.get_paths()["purelib"]]
    (venv_site / "deps.pth").write_text("\n".join(deps) + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COV_CORE_SOURCE", "COV_CORE_CONFIG")}
    probe = subprocess.run(
        [
            str(py),
            "-c",
            "import importlib.resources as r, lamina_batch, json;"
            "print(lamina_batch.__file__);"
            "print(json.loads((r.files('lamina_batch.schemas') / 'pipeline.schema.json').read_text())['$schema'])",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    where, schema = probe.stdout.splitlines()
    assert where.startswith(str(venv_site))  # the installed wheel, not this checkout
    assert "2020-12" in schema
    res = subprocess.run(
        [str(venv / "bin" / "lamina-batch"), "validate", str(ROOT / "examples" / "catalogue" / "pipeline.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "valid" in res.stdout
