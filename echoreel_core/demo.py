"""`python -m echoreel_core.demo`: EchoReel on the shipped toy model, reference | without | with.

The toy model (echoreel_core/toy) is a tiny VideoCrafter2-architecture text-to-video model that
this project trained on synthetic clips of coloured shapes; its base model only knows moving
left, right, up and down. The default reference shows an action neither the base model nor the
Action Prism ever trained on (a square orbiting clockwise), for EchoReel to make the prompt's
object move the same way. The demo writes the three videos side by side and prints how closely
each generated motion follows the reference's (the toy world's tracker, cosine of the motions;
README, "The toy model", for the figures over 60 held-out pairs).
"""

from __future__ import annotations

import argparse
import time

import torch

from .checkpoints import load_video_model
from .echoreel.features import encode_reference
from .echoreel.weights import load_echoreel
from .pipeline import SamplingSettings
from .toy import metrics
from .toy.evaluate import without_and_with
from .toy.models import TOY_ECHOREEL_FILE, TOY_MODEL_FILE, TOY_REFERENCE_FILE, shipped
from .toy.world import World
from .video_io import frames_to_model_input, read_video_frames, write_video


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m echoreel_core.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="outputs/demo.mp4", help="the .mp4 or .gif to write")
    parser.add_argument("--prompt", default="a red circle", help="what to generate (the toy world's objects)")
    parser.add_argument("--reference", help=f"reference video (default: the shipped {TOY_REFERENCE_FILE})")
    parser.add_argument("--reference-caption", default="a blue square", help="what the reference shows")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--strength", type=float, default=1.0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model = load_video_model(shipped(TOY_MODEL_FILE))
    echoreel = load_echoreel(shipped(TOY_ECHOREEL_FILE))
    world = World()
    preset = model.preset
    reference, _, _ = read_video_frames(args.reference or shipped(TOY_REFERENCE_FILE), num_frames=preset.frames,
                                        stride=world.stride, size=(preset.height, preset.width))
    settings = SamplingSettings(height=preset.height, width=preset.width, frames=preset.frames, fps=preset.fps,
                                steps=args.steps, cfg=preset.cfg, seed=args.seed)
    latents = encode_reference(model.vae, frames_to_model_input(reference), torch.Generator().manual_seed(args.seed))
    without, with_echoreel = without_and_with(model, echoreel, args.prompt, latents, args.reference_caption, settings,
                                              args.strength)
    path = write_video(args.output, metrics.grid(reference, without, with_echoreel), fps=world.fps)
    print(f"wrote {path}: reference | without EchoReel | with EchoReel, {preset.frames} frames of "
          f"{preset.width}x{preset.height} ({args.steps} DDIM steps, cfg {preset.cfg}) in "
          f"{time.perf_counter() - start:.1f} s")
    ref_track = metrics.track(reference)
    for name, video in (("without EchoReel", without), ("with EchoReel", with_echoreel)):
        tr = metrics.track(video)
        print(f"  {name:<17} motion cosine with the reference {metrics.motion_cosine(tr, ref_track):+.2f}, "
              f"object {metrics.video_object(tr)}, found in {metrics.detection_rate(tr):.0%} of frames")


if __name__ == "__main__":
    main()
