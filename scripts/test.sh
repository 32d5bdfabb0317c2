#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what it needs, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
