#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what it needs, then the static checks (ruff, mypy; their
# config is in pyproject.toml), then pytest. Any finding fails the run before a test starts. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
echo "test: ruff check ."
.venv/bin/ruff check .
echo "test: mypy dicomnode inference sr_writer"
.venv/bin/python -m mypy dicomnode inference sr_writer
exec .venv/bin/python -m pytest "$@"
