"""python -m echoreel_core.motion: save a reference video's motion to a file, and show a file.

    python -m echoreel_core.motion encode VIDEO --caption "a blue square" --prompt "a red circle" --out walk.safetensors
    python -m echoreel_core.motion info walk.safetensors

`encode` runs the Action Prism once, as Action Prism Encode does, and writes both guidance
branches' features with where they came from. --model and --echoreel default to the shipped toy
model; frames, stride and size default to what the EchoReel weights were trained for (16 frames,
stride 4, the Prism's reference latent size times the VAE's factor: 64x64 for the toy). The
features depend on the prompt and the negative prompt as well as on the reference: sample with
the prompts recorded in the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..loading.checkpoints import CheckpointError, load_video_model
from ..echoreel.features import Reference, action_features, encode_reference
from ..echoreel.weights import load_echoreel
from ..common.files import WriteError, make_folder
from ..sampling.ddim import NonFiniteError
from ..common.cli_args import at_least
from ..common.threads import add_threads_argument, configure_threads
from ..toy.models import TOY_ECHOREEL_FILE, TOY_MODEL_FILE, shipped
from ..video_io import VideoReadError, frames_to_model_input, read_video_frames
from .file import MotionFileError, describe, read_motion, save_motion
from .fingerprint import file_sha256, frames_sha256

RESIZE = ("squash", "crop")
POSTERIOR = ("sample", "mean")
SELECT = ("index", "time")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m echoreel_core.motion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("encode", help="a reference video's action features to a motion file")
    e.add_argument("video", help="the reference video")
    e.add_argument("--out", required=True, help="the motion file to write (.safetensors; its folder is made)")
    e.add_argument("--caption", required=True, help="what the reference shows (the reference caption)")
    e.add_argument("--prompt", required=True, help="the prompt of the videos to generate: the features depend on it")
    e.add_argument("--negative", default="", help="the negative prompt of the unconditional branch (default: empty)")
    e.add_argument("--model", help="the video model whose VAE and text encoder are used (default: the shipped toy)")
    e.add_argument("--echoreel", help="the EchoReel weights (default: the shipped toy's)")
    e.add_argument("--frames", type=at_least(1, "a whole number"), help="frames to read (default: the Prism's, 16)")
    e.add_argument("--stride", type=at_least(1, "a whole number"), default=4, help="read every n-th frame (default 4, as official)")
    e.add_argument("--start", type=at_least(0, "a whole number"), default=0, help="the first frame to read (default 0)")
    e.add_argument("--width", type=at_least(1, "a whole number"), help="frame width (default: the EchoReel weights' reference size)")
    e.add_argument("--height", type=at_least(1, "a whole number"), help="frame height (default: the EchoReel weights' reference size)")
    e.add_argument("--resize", choices=RESIZE, default="squash", help="squash (official) or crop the centre")
    e.add_argument("--select", choices=SELECT, default="index", help="frames by index (official) or by time")
    e.add_argument("--seed", type=at_least(0, "a whole number"), default=0, help="seed of the reference latents' posterior sample")
    e.add_argument("--posterior", choices=POSTERIOR, default="sample", help="a seeded posterior sample (official) or its mean")
    add_threads_argument(e)
    i = sub.add_parser("info", help="print a motion file's metadata")
    i.add_argument("file", help="the motion file")
    return p


def encode(args: argparse.Namespace) -> int:
    out = Path(args.out)
    model_path = Path(args.model) if args.model else shipped(TOY_MODEL_FILE)
    echoreel_path = Path(args.echoreel) if args.echoreel else shipped(TOY_ECHOREEL_FILE)
    model = load_video_model(model_path)
    echoreel = load_echoreel(echoreel_path)
    echoreel.check_fits(model.preset, model.unet)
    prism = echoreel.config.prism
    factor = model.vae.downscale_factor
    height, width = args.height or prism.latent_height * factor, args.width or prism.latent_width * factor
    if (height, width) != (prism.latent_height * factor, prism.latent_width * factor):
        raise ValueError(f"--width {width} --height {height}: these EchoReel weights need "
                         f"{prism.latent_width * factor}x{prism.latent_height * factor} reference frames")
    frames = args.frames or prism.frames
    pixels, video, _ = read_video_frames(args.video, num_frames=frames, stride=args.stride, start=args.start,
                                         size=(height, width), resize_mode=args.resize, select=args.select)
    with torch.no_grad():
        latents = encode_reference(model.vae, frames_to_model_input(pixels), torch.Generator().manual_seed(args.seed),
                                   args.posterior == "sample")
        features = action_features(echoreel, model.encode_text([args.prompt]), model.encode_text([args.negative]),
                                   [Reference(latents, model.encode_text([args.caption]))])
    info = {
        "source_video": Path(args.video).name, "source_sha256": file_sha256(args.video),
        "frames_sha256": frames_sha256(pixels), "start": args.start, "stride": args.stride, "fps": f"{video.fps:g}",
        "size": f"{width}x{height}", "resize": args.resize, "select": args.select, "seed": args.seed,
        "posterior": args.posterior, "caption": args.caption, "prompt": args.prompt, "negative_prompt": args.negative,
    }
    make_folder(out.parent)
    save_motion(out, features, echoreel, info, weights_name=echoreel_path.name)
    print("\n".join(describe(read_motion(out))))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command == "encode" and Path(args.out).suffix != ".safetensors":
        p.error(f"--out {args.out}: a motion file ends in .safetensors")
    try:
        if args.command == "info":
            print("\n".join(describe(read_motion(args.file))))
            return 0
        print(configure_threads(args.threads), flush=True)
        return encode(args)
    except (CheckpointError, VideoReadError, WriteError, MotionFileError, NonFiniteError, ValueError,
            FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
