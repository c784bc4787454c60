"""What the safety checks of a sampling run cost: the per-step NaN/Inf check on the latents and the
memory estimate before the run, against the same run without them, measured in one process.

    python bench/run_checks.py                 # the shipped toy model, 25 steps, 5 rounds
    python bench/run_checks.py --steps 50 --rounds 9

Rounds alternate checked and unchecked runs (so a busy machine slows both alike) and the fastest
of each is compared. The memory estimate is cached per preset and size, so it is timed cold,
once, and reported on its own beside a full-size preset's.
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import torch

from echoreel_core.pipelines import memory
from echoreel_core.loading.checkpoints import load_video_model
from echoreel_core.pipelines.generate import SamplingSettings, generate_latents
from echoreel_core.models.presets import PRESETS
from echoreel_core.sampling import ddim
from echoreel_core.common.threads import add_threads_argument, configure_threads
from echoreel_core.toy.models import TOY_MODEL_FILE, shipped


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=5)
    add_threads_argument(parser)
    args = parser.parse_args()
    print(configure_threads(args.threads))
    model = load_video_model(shipped(TOY_MODEL_FILE))
    p = model.preset
    settings = SamplingSettings(height=p.height, width=p.width, frames=p.frames, fps=p.fps, steps=args.steps, cfg=p.cfg)
    cond, uncond = model.encode_text(["a red circle"]), model.encode_text([""])

    def run() -> None:
        generate_latents(model, cond, uncond, settings)

    run()  # warm-up
    checked, unchecked = [], []
    for _ in range(args.rounds):
        checked.append(timed(run))
        with mock.patch.object(ddim, "check_finite_latents", lambda *a, **k: None):
            unchecked.append(timed(run))
    print(f"toy model, {args.steps} steps, fastest of {args.rounds}: with the NaN/Inf check {min(checked):.3f} s, "
          f"without {min(unchecked):.3f} s, ratio {min(checked) / min(unchecked):.3f}")
    for preset, size in ((p, (p.height, p.width)), (PRESETS["videocrafter2-t2v-512"], (320, 512))):
        memory.estimate_sampling_memory.cache_clear()
        seconds = timed(lambda: memory.estimate_sampling_memory(preset, 1, 16, *size, torch.float16))
        estimate = memory.estimate_sampling_memory(preset, 1, 16, *size, torch.float16)
        print(f"memory estimate, {preset.name} 16x{size[1]}x{size[0]} fp16: {seconds:.2f} s cold, "
              f"{estimate.total / memory.GiB:.2f} GiB")


if __name__ == "__main__":
    main()
