#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what it needs, then the static checks (ruff, mypy; their
# config is in pyproject.toml), then pytest. Any finding fails the run before a test starts. Extra args go to pytest.
# The vLLM engine's venv (scripts/vllm_venv.sh: minutes on a fresh machine, a stamp check otherwise) builds in the
# background meanwhile: only the engine tests need it; they run last (tests/conftest.py) and wait for the build's
# lock (tests/vllm_engine.py). Two xdist workers (CXR_TEST_WORKERS; 0 runs the tests in this process), a module's
# tests on one worker, slow modules first; one torch thread per test process (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
CXR_VLLM_LATER=1 bash scripts/bootstrap.sh
vllm_pid=""
if [ "${CXR_SKIP_VLLM:-0}" != "1" ]; then
  vllm_log=$(mktemp -t cxr-vllm-venv.XXXXXX.log)
  echo "test: building the vLLM venv in the background (log: $vllm_log)"
  bash scripts/vllm_venv.sh >"$vllm_log" 2>&1 &
  vllm_pid=$!  # it takes its lock at once; the engine tests come last, minutes later
fi
vllm_built() {
  [ -z "$vllm_pid" ] && return 0
  wait "$vllm_pid" && return 0
  echo "test: building the vLLM venv failed:"
  tail -n 40 "$vllm_log"
  return 1
}
echo "test: ruff check ."
.venv/bin/ruff check . || { vllm_built || true; exit 1; }
echo "test: mypy dicomnode inference sr_writer"
.venv/bin/python -m mypy dicomnode inference sr_writer || { vllm_built || true; exit 1; }
status=0
.venv/bin/python -m pytest -n "${CXR_TEST_WORKERS:-2}" --dist loadscope --no-loadscope-reorder "$@" || status=$?
vllm_built || status=1
exit "$status"
