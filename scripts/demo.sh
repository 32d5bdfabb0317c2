#!/usr/bin/env bash
# The node's main job end to end on embedded defaults: PACS (Orthanc) -> node -> SR + SC back in PACS.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/cxr-node demo "$@"
