"""`python -m echoreel_core.demo`: an end-to-end text-to-video run on a tiny model.

Until the toy world ships trained weights, the model is a tiny VideoCrafter2-architecture model
with RANDOM weights: the run proves that text encoding, DDIM sampling with guidance, VAE
decoding and video writing work end to end, not that the video shows anything.
"""

from __future__ import annotations

import argparse
import time

import torch

from .models.video_model import VideoModel
from .pipeline import SamplingSettings, text_to_video
from .presets import tiny_preset
from .video_io import write_video


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m echoreel_core.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="outputs/demo.mp4", help="the .mp4 or .gif to write")
    parser.add_argument("--prompt", default="a red circle moving left")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args(argv)

    preset = tiny_preset("videocrafter2-t2v-512")
    print(f"NOTE: {preset.name} has RANDOM weights (seed 0): the video is noise-like by design.")
    torch.manual_seed(0)
    model = VideoModel(preset).eval()
    settings = SamplingSettings(height=preset.height, width=preset.width, frames=16, fps=8, steps=args.steps, seed=args.seed)
    start = time.perf_counter()
    frames = text_to_video(model, args.prompt, settings)
    path = write_video(args.output, frames, fps=settings.fps)
    print(f"wrote {path}: {frames.shape[0]} frames of {frames.shape[2]}x{frames.shape[1]} "
          f"in {time.perf_counter() - start:.1f} s ({args.steps} DDIM steps, cfg {settings.cfg})")


if __name__ == "__main__":
    main()
