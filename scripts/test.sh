#!/usr/bin/env bash
# Set up .venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
bash scripts/setup_comfyui.sh   # a real ComfyUI (test-only) for the node and end-to-end tests
bash scripts/setup_browser.sh   # chromium + chromium-driver (apt) and selenium, for the browser test
.venv/bin/python -m pytest -q tests "$@"
