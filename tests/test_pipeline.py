"""Text-to-video and image-to-video end to end on tiny models; the core never imports ComfyUI."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import torch
from tiny import tiny_model

from echoreel_core.pipeline import SamplingSettings, image_to_video, text_to_video
from echoreel_core.video_io import probe_video

ROOT = pathlib.Path(__file__).resolve().parents[1]
SETTINGS = SamplingSettings(height=64, width=64, frames=4, fps=8, steps=4, cfg=7.5, seed=7)



def test_text_to_video_is_seeded_and_reports_every_step():
    model = tiny_model("videocrafter2-t2v-512")
    steps = []
    frames = text_to_video(model, "a red circle", SETTINGS, callback=lambda i, x, x0: steps.append(i))
    assert frames.shape == (4, 64, 64, 3) and frames.dtype == torch.float32
    assert 0 <= frames.min() and frames.max() <= 1 and frames.std() > 0
    assert steps == [0, 1, 2, 3]
    assert torch.equal(frames, text_to_video(model, "a red circle", SETTINGS))
    other_seed = text_to_video(model, "a red circle", SamplingSettings(**{**SETTINGS.__dict__, "seed": 8}))
    assert not torch.equal(frames, other_seed)


def test_image_to_video_uses_the_image():
    model = tiny_model("videocrafter1-i2v-512")
    image = torch.rand(40, 72, 3)
    frames = image_to_video(model, image, "a cat", SETTINGS)
    assert frames.shape == (4, 64, 64, 3)
    assert torch.equal(frames, image_to_video(model, image, "a cat", SETTINGS))
    assert not torch.equal(frames, image_to_video(model, 1 - image, "a cat", SETTINGS))
    with pytest.raises(ValueError, match="image-to-video"):
        text_to_video(model, "a cat", SETTINGS)


def test_lvdm_text_to_video_runs():
    frames = text_to_video(tiny_model("lvdm-short-t2v"), "a dog", SETTINGS)
    assert frames.shape == (4, 64, 64, 3) and torch.isfinite(frames).all()


def test_bad_sizes_are_refused():
    model = tiny_model("videocrafter2-t2v-512")
    with pytest.raises(ValueError, match="multiples of 4, got 66x64"):
        text_to_video(model, "x", SamplingSettings(height=66, width=64, frames=2, steps=1))


def test_core_never_imports_comfy():
    code = (
        "import sys, pkgutil, importlib, echoreel_core\n"
        "for m in pkgutil.walk_packages(echoreel_core.__path__, 'echoreel_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m == 'comfy' or m.startswith('comfy.') or m in ('folder_paths', 'nodes')]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_demo_writes_the_toy_side_by_side_and_reports_the_motions(tmp_path):
    out = tmp_path / "demo.mp4"
    result = subprocess.run(
        [sys.executable, "-m", "echoreel_core.demo", "--output", str(out), "--steps", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "reference | without EchoReel | with EchoReel" in result.stdout
    assert result.stdout.count("motion cosine with the reference") == 2
    info = probe_video(out)
    assert info.frame_count == 16 and (info.width, info.height) == (3 * 64 + 2 * 2, 64)  # three videos, two gaps
