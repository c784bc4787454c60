"""Validation videos, rank 0 only, between steps: for a few entries, `reference | without EchoReel
| with EchoReel` side by side in `validation/step_N_k.mp4`, sampled with the weights as they are
(the pipelines' own sampler, EchoReel attached by it and detached after).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..common.files import make_folder
from ..echoreel.features import Reference, action_features, encode_reference
from ..pipelines.generate import EchoReelGuidance, SamplingSettings, image_to_video, text_to_video
from ..video_io import VideoReadError, frames_to_model_input, read_video_frames, stack_side_by_side, write_video
from .data import Entry, load_entries

if TYPE_CHECKING:
    from .loop import Trainer

log = logging.getLogger("echoreel_core.train")


def validation_entries(run: Trainer) -> list[Entry]:
    """validation.json's entries, or every (n/20)-th training entry as the official validation subset."""
    v = run.cfg.validation
    if v.json:
        entries, skips = load_entries(v.json)
        for skip in skips:
            log.warning("validation %s", skip.message())
    else:
        entries = run.entries[:: max(1, len(run.entries) // 20)]
    return entries[: v.num_samples]


@torch.no_grad()
def validate(run: Trainer) -> list[Path]:
    """Rank 0: the videos of this step; an entry that cannot be read or sampled is logged and skipped."""
    if not run.dist.is_main:
        return []
    run.optimizer.zero_grad(set_to_none=True)  # sampling's activations, not the gradients (update() frees them too)
    run.module.detach()  # sampling attaches EchoReel by itself
    run.echoreel.eval()
    written = []
    try:
        for k, entry in enumerate(validation_entries(run)):
            try:
                written.append(validation_video(run, k, entry))
            except (VideoReadError, OSError, ValueError) as error:
                log.warning("validation entry %d: %s; skipped", entry.index, error)
    finally:
        run.echoreel.train()
    return written


def validation_video(run: Trainer, k: int, entry: Entry) -> Path:
    v, spec, model = run.cfg.validation, run.spec, run.model
    read = dict(num_frames=spec.frames, stride=spec.stride, start=spec.start, size=(spec.height, spec.width),
                resize_mode=spec.resize_mode)
    reference, _, _ = read_video_frames(entry.reference, **read)  # (t, h, w, 3) in [0, 1]
    settings = SamplingSettings(height=spec.height, width=spec.width, frames=spec.frames, fps=run.batches.fps,
                                steps=v.steps, cfg=v.cfg or model.preset.cfg, eta=v.eta, seed=v.seed)
    with run.autocast():
        latents = encode_reference(model.vae, frames_to_model_input(reference), torch.Generator().manual_seed(v.seed))
        features = action_features(run.echoreel, model.encode_text([entry.prompt]), model.encode_text([v.negative_prompt]),
                                   [Reference(latents, model.encode_text([entry.caption]))])
        guide = EchoReelGuidance(run.echoreel, features, strength=v.strength)
        if model.preset.is_i2v:
            image = read_video_frames(entry.target, **{**read, "num_frames": 1})[0][0]  # (h, w, 3)
            run_with = lambda echo: image_to_video(model, image, entry.prompt, settings, v.negative_prompt, echoreel=echo)  # noqa: E731
        else:
            run_with = lambda echo: text_to_video(model, entry.prompt, settings, v.negative_prompt, echoreel=echo)  # noqa: E731
        without, with_echoreel = run_with(None), run_with(guide)
    path = run.out / "validation" / f"step_{run.step:08d}_{k}.{v.format}"
    make_folder(path.parent)
    write_video(path, stack_side_by_side(reference, without.float(), with_echoreel.float()), fps=v.video_fps)
    return path
