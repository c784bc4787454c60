"""`python -m echoreel_core.demo`: EchoReel on the shipped toy model, reference | without | with.

The toy model (echoreel_core/toy) is a tiny VideoCrafter2-architecture text-to-video model that
this project trained on synthetic clips of coloured shapes; its base model only knows moving
left, right, up and down. The default reference shows an action neither the base model nor the
Action Prism ever trained on (a square orbiting clockwise), for EchoReel to make the prompt's
object move the same way. The demo writes the three videos side by side and prints how closely
each generated motion follows the reference's (the toy world's tracker, cosine of the motions;
README, "The toy model", for the figures over 70 held-out pairs). With --i2v it runs the
image-to-video toy instead, both videos starting from a first frame (default: the shipped red
circle where the reference's orbit starts), and also prints how far frame 0's object lies from
the image's.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from .loading.checkpoints import CheckpointError, load_video_model
from .echoreel.features import encode_reference
from .echoreel.weights import load_echoreel
from .common.files import WriteError, make_folder
from .pipelines.memory import InsufficientMemoryError
from .pipelines.generate import SamplingSettings
from .sampling.ddim import NonFiniteError
from .common.threads import add_threads_argument, configure_threads
from .toy import metrics
from .toy.evaluate import without_and_with
from .toy.models import (TOY_ECHOREEL_FILE, TOY_FIRST_FRAME_FILE, TOY_I2V_ECHOREEL_FILE, TOY_I2V_MODEL_FILE,
                         TOY_MODEL_FILE, TOY_REFERENCE_FILE, shipped)
from .toy.world import World
from .video_io import VideoReadError, frames_to_model_input, read_video_frames, write_video

OUTPUT_SUFFIXES = (".mp4", ".gif")


def check_output(parser: argparse.ArgumentParser, output: Path) -> None:
    """Before any work: a suffix write_video can write, a folder that exists (made if missing) and
    takes a new file. A failure is one line naming the path and the OS reason (exit 2)."""
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        parser.error(f"--output {output}: the suffix must be one of {', '.join(OUTPUT_SUFFIXES)}, got "
                     f"{output.suffix or 'none'!r}")
    if output.parent.exists() and not output.parent.is_dir():
        parser.error(f"--output {output}: cannot write there: {output.parent} is a file, not a folder")
    try:
        make_folder(output.parent)
        with tempfile.NamedTemporaryFile(dir=output.parent, prefix=f".{output.name}.", suffix=".probe"):
            pass
    except OSError as error:
        parser.error(f"--output {output}: cannot write there: {error.strerror or error}")


class Progress:
    """Stage lines with the elapsed time, and step k of N for the two sampling runs: rewritten in
    place on a terminal, every fifth of the run in a log. A new user sees what runs and that it moves."""

    def __init__(self, steps: int):
        self.steps = steps
        self.started = time.perf_counter()
        self.live = sys.stdout.isatty()
        self.every = 1 if self.live else max(1, steps // 5)

    def stage(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:5.1f} s] {text}", flush=True)

    def step(self, run: str, done: int) -> None:
        if done % self.every == 0 or done == self.steps:
            line = f"[{time.perf_counter() - self.started:5.1f} s] sampling {run}: step {done} of {self.steps}"
            if self.live:
                print(f"\r{line}", end="\n" if done == self.steps else "", flush=True)
            else:
                print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m echoreel_core.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="outputs/demo.mp4", help="the .mp4 or .gif to write (its folder is made)")
    parser.add_argument("--prompt", default="a red circle", help="what to generate (the toy world's objects)")
    parser.add_argument("--reference", help=f"reference video (default: the shipped {shipped(TOY_REFERENCE_FILE)})")
    parser.add_argument("--reference-caption", default="a blue square", help="what the reference shows")
    parser.add_argument("--i2v", action="store_true", help="the image-to-video toy, starting from --image")
    parser.add_argument("--image", help=f"with --i2v, the first frame (default: the shipped {shipped(TOY_FIRST_FRAME_FILE)})")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--strength", type=float, default=1.0, help="EchoReel strength (default 1)")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.image and not args.i2v:
        parser.error("--image is the first frame of the image-to-video toy: add --i2v")
    output = Path(args.output)
    check_output(parser, output)
    print(configure_threads(args.threads), flush=True)

    try:
        return run(args, output)
    except (CheckpointError, VideoReadError, WriteError, InsufficientMemoryError, NonFiniteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, output: Path) -> int:
    progress = Progress(args.steps)
    model_file, echoreel_file = (TOY_I2V_MODEL_FILE, TOY_I2V_ECHOREEL_FILE) if args.i2v else (TOY_MODEL_FILE,
                                                                                              TOY_ECHOREEL_FILE)
    progress.stage(f"loading the {'image' if args.i2v else 'text'}-to-video toy model and EchoReel from "
                   f"{shipped(model_file).parent.parent}")
    model = load_video_model(shipped(model_file))
    echoreel = load_echoreel(shipped(echoreel_file))
    world = World()
    preset = model.preset
    reference_path = args.reference or shipped(TOY_REFERENCE_FILE)
    progress.stage(f"reading the reference {reference_path}")
    reference, _, _ = read_video_frames(reference_path, num_frames=preset.frames, stride=world.stride,
                                        size=(preset.height, preset.width))
    image = start = None
    if args.i2v:
        image_path = args.image or shipped(TOY_FIRST_FRAME_FILE)
        progress.stage(f"reading the first frame {image_path}")
        image = read_video_frames(image_path, num_frames=1, size=(preset.height, preset.width))[0][0]  # (h, w, 3)
        start = metrics.track(image[None])[0]
    settings = SamplingSettings(height=preset.height, width=preset.width, frames=preset.frames, fps=preset.fps,
                                steps=args.steps, cfg=preset.cfg, seed=args.seed)
    latents = encode_reference(model.vae, frames_to_model_input(reference), torch.Generator().manual_seed(args.seed))
    without, with_echoreel = without_and_with(model, echoreel, args.prompt, latents, args.reference_caption, settings,
                                              args.strength, progress=progress.step, image=image)
    path = write_video(output, metrics.grid(reference, without, with_echoreel), fps=world.fps)
    progress.stage(f"wrote {path}: reference | without EchoReel | with EchoReel, {preset.frames} frames of "
                   f"{preset.width}x{preset.height} ({args.steps} DDIM steps, cfg {preset.cfg})")
    ref_track = metrics.track(reference)
    for name, video in (("without EchoReel", without), ("with EchoReel", with_echoreel)):
        tr = metrics.track(video)
        kept, path = "", metrics.path_cosine(tr, ref_track)
        path = "n/a: the reference stays in place" if path is None else f"{path:+.2f}"
        if start is not None and tr[0] is not None:
            kept = f", frame 0's object {math.dist((tr[0].x, tr[0].y), (start.x, start.y)):.1f} px from the image's"
        print(f"  {name:<17} motion cosine with the reference {metrics.motion_cosine(tr, ref_track):+.2f} "
              f"(path alone {path}), "
              f"object {metrics.video_object(tr)}, found in {metrics.detection_rate(tr):.0%} of frames{kept}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
