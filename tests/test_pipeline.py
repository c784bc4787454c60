"""Text-to-video and image-to-video end to end on tiny models; the core never imports ComfyUI."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import time

import pytest
import torch
from tiny import tiny_model

from echoreel_core.pipelines.generate import SamplingSettings, image_to_video, text_to_video
from echoreel_core.video_io import probe_video, write_video

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


@pytest.mark.parametrize("size, message", [
    (dict(height=66, width=64), "positive multiples of 4 for this model, got 64x66"),
    (dict(height=-8, width=64), "positive multiples of 4 for this model, got 64x-8"),
    (dict(height=0, width=64), "positive multiples of 4 for this model, got 64x0"),
    (dict(height=64, width=64, frames=0), "frames and steps must be at least 1, got 0 and 1"),
])
def test_bad_sizes_are_refused_before_any_work(size, message):
    model = tiny_model("videocrafter2-t2v-512")
    model.encode_text = None  # any work (the text encoder runs first) would fail differently
    with pytest.raises(ValueError, match=message):
        text_to_video(model, "x", SamplingSettings(**{"frames": 2, "steps": 1, **size}))


def test_a_request_beyond_the_machine_memory_is_refused_with_estimate_and_limit():
    """256 frames at 4096x4096 must not start and then get killed."""
    from echoreel_core.pipelines.memory import InsufficientMemoryError, available_bytes

    model = tiny_model("videocrafter2-t2v-512")
    model.encode_text = None
    started = time.perf_counter()
    with pytest.raises(InsufficientMemoryError) as error:
        text_to_video(model, "x", SamplingSettings(height=4096, width=4096, frames=256, steps=1))
    assert time.perf_counter() - started < 30
    needed, free = (float(v) for v in re.search(r"needs about ([\d.]+) GiB .* has ([\d.]+) GiB free", str(error.value)).groups())
    assert needed > free and free == pytest.approx(available_bytes(torch.device("cpu")) / 2**30, rel=0.2)
    assert "256 frames at 4096x4096 on videocrafter2-t2v-512" in str(error.value)


def test_the_estimate_follows_the_size_and_counts_fused_attention_as_its_output():
    """Linear in frames x pixels at the top level (attention is fused: no n x n weights)."""
    from echoreel_core.pipelines.memory import estimate_sampling_memory

    preset = tiny_model("videocrafter2-t2v-512").preset
    small, large = (estimate_sampling_memory(preset, 1, frames, 64, 64) for frames in (4, 16))
    assert 3.0 < large.unet_bytes / small.unet_bytes < 4.5
    wide = estimate_sampling_memory(preset, 1, 4, 128, 128)
    assert 3.0 < wide.unet_bytes / small.unet_bytes < 4.5


def test_nan_in_sampling_stops_at_the_step_it_appears():
    from echoreel_core.sampling.ddim import NonFiniteError

    model = tiny_model("videocrafter2-t2v-512")
    done = []

    def overflow_after_the_second_step(i, x, x0):
        done.append(i)
        if i == 1:
            model.unet.out[-1].bias.data.fill_(float("inf"))

    with pytest.raises(NonFiniteError, match=r"NaN/Inf latents at step 3 of 5 \(timestep 401\)"):
        text_to_video(model, "x", SamplingSettings(height=64, width=64, frames=2, steps=5),
                      callback=overflow_after_the_second_step)
    assert done == [0, 1]


def test_a_video_of_nan_frames_is_never_written(tmp_path):
    frames = torch.rand(4, 8, 8, 3)
    frames[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"not written: frames \[2\] of 4 hold NaN/Inf"):
        write_video(tmp_path / "black.mp4", frames, fps=8)
    assert not list(tmp_path.iterdir())


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
    assert len(re.findall(r"motion cosine with the reference [-+][\d.]+ \(path alone [-+][\d.]+\), ", result.stdout)) == 2
    lines = result.stdout.splitlines()
    assert lines[0].startswith("torch threads: ")
    assert re.search(r"^\[ *[\d.]+ s\] sampling without EchoReel: step 2 of 2$", result.stdout, re.M)
    assert re.search(r"^\[ *[\d.]+ s\] sampling with EchoReel: step 2 of 2$", result.stdout, re.M)
    info = probe_video(out)
    assert info.frame_count == 16 and (info.width, info.height) == (3 * 64 + 2 * 2, 64)  # three videos, two gaps


def test_demo_runs_the_image_to_video_toy_from_its_first_frame(tmp_path):
    out = tmp_path / "demo_i2v.mp4"
    result = subprocess.run(
        [sys.executable, "-m", "echoreel_core.demo", "--i2v", "--output", str(out), "--steps", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "image-to-video toy model" in result.stdout and "toy_first_frame.png" in result.stdout
    assert len(re.findall(r"motion cosine with the reference [-+][\d.]+ \(path alone [-+][\d.]+\), .*, frame 0's object [\d.]+ px from the "
                          r"image's$", result.stdout, re.M)) == 2
    assert probe_video(out).frame_count == 16
    refused = subprocess.run([sys.executable, "-m", "echoreel_core.demo", "--image", "first.png"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--image is the first frame of the image-to-video toy: add --i2v" in refused.stderr


@pytest.mark.parametrize("output, message", [
    ("demo.webm", r"--output \S*demo\.webm: the suffix must be one of \.mp4, \.gif, got '\.webm'"),
    ("a_file/demo.mp4", r"--output \S*a_file/demo\.mp4: cannot write there: \S*a_file is a file, not a folder"),
])
def test_demo_refuses_an_output_it_cannot_write_before_any_work(tmp_path, output, message):
    (tmp_path / "a_file").write_text("")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "echoreel_core.demo", "--output", str(tmp_path / output)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and re.search(message, result.stderr), result.stderr
    assert "loading" not in result.stdout and time.perf_counter() - started < 60


def test_demo_makes_its_output_folder(tmp_path):
    out = tmp_path / "new" / "folder" / "demo.gif"
    result = subprocess.run([sys.executable, "-m", "echoreel_core.demo", "--output", str(out), "--steps", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert probe_video(out).frame_count == 16
