#!/usr/bin/env bash
# Test-only: a real browser for tests/test_browser.py (and scripts/example_workflows.py layout):
# Debian's chromium and chromium-driver from apt (nothing downloads a browser build of its own),
# and selenium from PyPI into .venv, torch kept pinned. Each is installed only when missing; a
# failed install fails the set-up (and so the test run), it never skips the browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "installing chromium and chromium-driver (apt): about 20 s, once" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
if ! .venv/bin/python -c "import selenium" 2>/dev/null; then
  .venv/bin/python -m pip --disable-pip-version-check -q install -c constraints.txt selenium
fi
