"""A real ComfyUI for the node and end-to-end tests, and the tiny weights and videos they use.

ComfyUI comes from `scripts/setup_comfyui.sh` (.comfyui/ComfyUI, the 0.3.75 copy that CI can
install); its torchvision/torchaudio imports are served by the stand-ins in tests/comfyui_stubs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import sys

import torch

from echoreel_core.loading.checkpoints import save_video_model
from echoreel_core.echoreel.weights import EchoReel, EchoReelConfig, save_echoreel
from echoreel_core.models.video_model import VideoModel
from echoreel_core.models.presets import tiny_preset
from echoreel_core.video_io import write_video

ROOT = pathlib.Path(__file__).resolve().parents[1]
# ECHOREEL_COMFYUI_DIR runs the same tests against another ComfyUI checkout (e.g. the newest)
COMFYUI = pathlib.Path(os.environ.get("ECHOREEL_COMFYUI_DIR", ROOT / ".comfyui" / "ComfyUI"))
STUBS = ROOT / "tests" / "comfyui_stubs"
PACK = "comfyui_echoreel_pack"

# the files the example workflows name
LVDM_FILE = "lvdm_short_t2v.safetensors"
LVDM_ECHOREEL_FILE = "echoreel_lvdm.safetensors"
I2V_FILE = "videocrafter1_i2v_512.safetensors"
I2V_ECHOREEL_FILE = "echoreel_videocrafter1_i2v_512.safetensors"


def require_comfyui() -> pathlib.Path:
    if not (COMFYUI / "main.py").is_file():
        raise RuntimeError(f"{COMFYUI} is missing: run `bash scripts/setup_comfyui.sh` (scripts/test.sh does)")
    return COMFYUI


def import_pack_in_process():
    """Make ComfyUI importable here and import this repository as a ComfyUI custom-node package."""
    require_comfyui()
    for path in (str(COMFYUI), str(STUBS)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management reads it, as `main.py --cpu` does
    if PACK not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK]


def write_tiny_weights(models_dir: pathlib.Path) -> None:
    """Tiny random models under the names the workflows expect (files are files: the top-level
    echoreel_core writes them, the pack's copy inside ComfyUI reads them)."""
    (models_dir / "videocrafter").mkdir(parents=True, exist_ok=True)
    (models_dir / "echoreel").mkdir(parents=True, exist_ok=True)
    for name, model_file, echoreel_file in (
        ("lvdm-short-t2v", LVDM_FILE, LVDM_ECHOREEL_FILE),
        ("videocrafter1-i2v-512", I2V_FILE, I2V_ECHOREEL_FILE),
    ):
        torch.manual_seed(0)
        # reference videos of 32x32 pixels (a 16x16 latent) keep the tiny Prism fast
        model = VideoModel(dataclasses.replace(tiny_preset(name), height=32, width=32))
        for p in model.unet.parameters():
            p.data.normal_(0, 0.05)
        save_video_model(model, models_dir / "videocrafter" / model_file)
        config = EchoReelConfig.for_preset(model.preset, layers=2, latent_dim=32, heads=2, head_dim=16, latent_text_dim=32)
        echoreel = EchoReel(config)
        for p in echoreel.parameters():
            p.data.normal_(0, 0.05)
        save_echoreel(echoreel, models_dir / "echoreel" / echoreel_file)


def write_reference_video(path: pathlib.Path, frames: int = 20, size: int = 48) -> pathlib.Path:
    """A red square moving right on grey: a real mp4 through PyAV."""
    video = torch.full((frames, size, size, 3), 0.5)
    for i in range(frames):
        x = 2 + i * (size - 12) // frames
        video[i, size // 3 : size // 3 + 10, x : x + 10] = torch.tensor([0.9, 0.1, 0.1])
    write_video(path, video, fps=8)
    return path
