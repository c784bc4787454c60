#!/usr/bin/env bash
# Creates .venv (once) with torch 2.13.0 installed first and pinned for every later install.
# A finished set-up leaves a stamp (a hash of this script and of what it installs from); while the
# stamp matches, later runs install nothing, so the demo and the tests start at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp=.venv/.echoreel-setup
wanted=$(cat scripts/setup_venv.sh pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
  exit 0
fi
echo "setting up .venv (torch 2.13.0 CPU, then the pack's requirements): a minute or two, once" >&2
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
echo "$wanted" > "$stamp"
