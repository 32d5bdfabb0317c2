#!/usr/bin/env bash
# Installs everything the node, its demo and its tests need on a fresh Debian machine:
# Debian peers (DCMTK, Orthanc, PostgreSQL, fonts) and a virtual environment in .venv.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(dcmtk orthanc postgresql fonts-dejavu-core fonts-droid-fallback openssl)
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

VENV=${CXR_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat setup.cfg scripts/bootstrap.sh | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  echo "bootstrap: installing Python packages into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # CPU build of torch pinned here; GPU hosts install their own CUDA torch (see deploy/).
  "$VENV/bin/pip" install -q "torch==2.13.0"
  "$VENV/bin/pip" install -q -e ".[test]"
  touch "$stamp"
fi

# The vLLM CPU engine for the remote-backend tests (own venv, cached by a stamp). CXR_SKIP_VLLM=1 skips it.
if [ "${CXR_SKIP_VLLM:-0}" != "1" ]; then
  scripts/vllm_venv.sh
fi
