# One command for everything CI runs: `make check` (lint, format, types, tests + coverage, benchmark smoke).
# Uses the project's virtualenv when it exists, else whatever python is on PATH.
PY ?= $(shell [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)

.PHONY: check lint types test bench-smoke bench fmt

check: lint types test bench-smoke

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

types:
	$(PY) -m mypy

test:
	$(PY) -m pytest -n 4 --cov=lamina_batch --cov-branch --cov-report=term:skip-covered -q

bench-smoke:
	$(PY) benchmarks/run.py --smoke

bench:
	$(PY) benchmarks/run.py

fmt:
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .
