#!/usr/bin/env bash
# Set up .venv and run the demo: a text-to-video run that writes outputs/demo.mp4.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
.venv/bin/python -m echoreel_core.demo --output outputs/demo.mp4 "$@"
