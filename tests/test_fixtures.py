"""Bad-input scenarios in tests/fixtures/<case>/: each must exit 2 with every expected substring on stderr."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lamina_batch.errors import ConfigError
from lamina_batch.matrix import validate_pipeline
from lamina_batch.spec import load_pipeline

FIXTURES = Path(__file__).parent / "fixtures"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "expected.txt").is_file())


def _expected(case: str) -> tuple[int, list[str]]:
    lines = (FIXTURES / case / "expected.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("exit: ")
    return int(lines[0].removeprefix("exit: ")), [line for line in lines[1:] if line]


def _prepare(case: str, tmp_path: Path) -> Path:
    """Copy the case to a temp dir (nothing is written into the repo) and apply `pad_to_bytes`."""
    dest = tmp_path / case
    shutil.copytree(FIXTURES / case, dest)
    pipeline = dest / "pipeline.yaml"
    pad = dest / "pad_to_bytes"
    if pad.exists():
        size = int(pad.read_text().strip())
        with pipeline.open("a", encoding="utf-8") as f:
            line = "# " + "x" * 98 + "\n"
            f.write(line * (size // len(line) + 1))
    return pipeline


def test_there_are_enough_cases() -> None:
    """The brief asks for at least 25 bad-input scenarios, each with at least one expected substring."""
    assert len(CASES) >= 25
    for case in CASES:
        code, substrings = _expected(case)
        assert code == 2
        assert substrings, case


@pytest.mark.parametrize("case", CASES)
def test_library_reports_case(case: str, tmp_path: Path) -> None:
    """load_pipeline + validate_pipeline raise ConfigError whose text holds every expected substring."""
    _, substrings = _expected(case)
    path = _prepare(case, tmp_path)
    with pytest.raises(ConfigError) as info:
        validate_pipeline(load_pipeline(path))
    text = str(info.value)
    for s in substrings:
        assert s in text, f"{case}: {s!r} not in:\n{text}"


@pytest.mark.parametrize("case", CASES)
def test_cli_validate_reports_case(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`lamina-batch validate` exits 2, prints every expected substring on stderr and no traceback."""
    cli = pytest.importorskip("lamina_batch.cli")
    code, substrings = _expected(case)
    path = _prepare(case, tmp_path)
    assert cli.main(["validate", str(path)]) == code
    err = capsys.readouterr().err
    for s in substrings:
        assert s in err, f"{case}: {s!r} not in:\n{err}"
    assert "Traceback" not in err
