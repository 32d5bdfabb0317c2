#!/usr/bin/env bash
# The node's main job end to end on embedded defaults: PACS (Orthanc) -> node -> SR + SC back in PACS.
set -euo pipefail
cd "$(dirname "$0")/.."
CXR_SKIP_VLLM=1 bash scripts/bootstrap.sh  # the demo runs the local model: no serving engine to build
exec .venv/bin/cxr-node demo "$@"
