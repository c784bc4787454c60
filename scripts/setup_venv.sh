#!/usr/bin/env bash
# Creates .venv (once) with torch 2.13.0 installed first and pinned for every later install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pip install torch==2.13.0
fi
pip install -c constraints.txt -e ".[test]"
# The CLIP BPE vocabulary ships inside open_clip_torch; its dependencies (torchvision, timm)
# would replace torch, and only the data file is read, so it is installed without them.
pip install -c constraints.txt --no-deps open_clip_torch==3.3.0
