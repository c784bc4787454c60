"""Long videos on a loaded VideoModel: K clips of `settings.frames` frames tied by Reuse-and-Diffuse.

The sampler is `sampling.long_video.sample_long_video` (FNR, PNS, DSG, as the official VidRD
code); this module supplies each clip's denoiser (its own prompt, the shared negative prompt and
image, its own EchoReel reference if a list is given). `generate_long_latents` needs only the
UNet, preset and schedule (as `generate.generate_latents`, for the ComfyUI sampler);
`long_text_to_video` / `long_image_to_video` decode each clip as soon as it is sampled, so memory
does not grow with the length beyond the output frames. With one clip the results equal
`generate.generate_latents` / `text_to_video` / `image_to_video` exactly.
"""

from __future__ import annotations

import torch

from ..models.video_model import VideoModel
from .generate import (EchoReelGuidance, SamplingRun, SamplingSettings, check_request, decode_to_frames, guided_denoiser,
                       prepare_image)
from ..sampling.ddim import Denoiser, StepCallback
from ..sampling.long_video import ClipDenoisers, ClipSink, sample_long_video

Guidance = EchoReelGuidance | list[EchoReelGuidance] | None


def _per_clip(prompts: str | list[str], num_clips: int) -> list[str]:
    if num_clips < 1:
        raise ValueError(f"num_clips must be at least 1, got {num_clips}")
    if isinstance(prompts, str):
        return [prompts] * num_clips
    prompts = list(prompts)
    if len(prompts) == 1:
        return prompts * num_clips
    if len(prompts) != num_clips:
        raise ValueError(f"give one prompt for all clips or one per clip ({num_clips}), got {len(prompts)}")
    return prompts


def _encode_prompts(model: VideoModel, prompts: list[str]) -> list[torch.Tensor]:
    """Each distinct prompt encoded once; (1, L, c) per clip."""
    cache: dict[str, torch.Tensor] = {}
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = model.encode_text([prompt])
    return [cache[p] for p in prompts]


def _per_clip_guidance(echoreel: Guidance, num_clips: int) -> list[EchoReelGuidance] | None:
    if echoreel is None or isinstance(echoreel, EchoReelGuidance):
        return None if echoreel is None else [echoreel] * num_clips
    guides = list(echoreel)
    if len(guides) != num_clips:
        raise ValueError(f"give one EchoReel guidance for all clips or one per clip ({num_clips}), got {len(guides)}")
    if any(not isinstance(g, EchoReelGuidance) for g in guides):
        raise ValueError("every per-clip EchoReel guidance must be an EchoReelGuidance")
    if any(g.weights is not guides[0].weights for g in guides):
        raise ValueError("per-clip EchoReel guidance must share one set of EchoReel weights (it is attached once)")
    return guides


@torch.no_grad()
def generate_long_latents(
    model: VideoModel,
    conds: list[torch.Tensor],
    uncond: torch.Tensor | None,
    settings: SamplingSettings,
    overlap: int = 4,
    alpha: float = 4.0,
    beta: float = 0.4,
    drop_overlap: bool = False,
    echoreel: Guidance = None,
    callback: StepCallback | None = None,
    decode_clip: ClipSink | None = None,
) -> torch.Tensor | None:
    """One clip per context in `conds` (each (b, L, c)), `settings.frames` frames each.

    Returns the latents (b, 4, T, h, w) of all clips concatenated in time, or, when
    `decode_clip(k, latents)` is given, hands it each clip as soon as it is sampled and returns
    None (so nothing but the caller's output grows with the length). Seeding, shapes, CFG and the
    EchoReel start/end window of each clip are those of `generate.generate_latents`, and as there
    only `model.unet`, `model.preset` and `model.schedule` are used. EchoReel is attached once for
    the whole run and detached whatever happens; a list of guidances (one per clip) re-binds clip
    k's features when clip k starts (one k/v projection per site), a single guidance is bound
    once for every clip.
    """
    num_clips = len(conds)
    if num_clips < 1:
        raise ValueError("give at least one clip's context")
    run = SamplingRun.prepare(model, conds[0].shape[0], settings)
    conds = [cond.to(run.device, run.dtype) for cond in conds]
    uncond = uncond.to(run.device, run.dtype) if uncond is not None else None
    guides = _per_clip_guidance(echoreel, num_clips)

    def denoiser(k: int) -> Denoiser:
        return guided_denoiser(model.unet, conds[k], uncond, settings.cfg, run.fps)

    def sample(denoise_for_clip: ClipDenoisers) -> torch.Tensor | None:
        clips = sample_long_video(
            denoise_for_clip, run.shape, run.steps, num_clips, overlap, alpha, beta, run.generator,
            callback=callback, decode_clip=decode_clip, drop_overlap=drop_overlap, device=run.device, dtype=run.dtype,
        )
        return None if clips is None else torch.cat(clips, dim=2)

    if guides is None:
        return sample(denoiser)
    batched = uncond is not None and settings.cfg != 1.0  # the branches guided_denoiser runs
    # attached only inside this run, detached whatever happens
    with guides[0].weights.attach(model.preset, model.unet, guides[0].strength) as attachment:
        bound: list = [None]  # the features now bound, so an unchanged reference is not re-projected

        def echoreel_denoiser(k: int) -> Denoiser:
            if guides[k].features is not bound[0]:
                run.bind(attachment, guides[k], batched)
                bound[0] = guides[k].features
            return run.windowed(denoiser(k), attachment, guides[k])

        return sample(echoreel_denoiser)


def generate_long_video(
    model: VideoModel,
    conds: list[torch.Tensor],
    uncond: torch.Tensor | None,
    settings: SamplingSettings,
    overlap: int = 4,
    alpha: float = 4.0,
    beta: float = 0.4,
    drop_overlap: bool = False,
    echoreel: Guidance = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """`generate_long_latents` for batch 1, each clip decoded as soon as it is sampled (and its
    latents then dropped) -> frames (T, H, W, 3) in [0, 1], float on the CPU."""
    frames: list[torch.Tensor] = []
    generate_long_latents(
        model, conds, uncond, settings, overlap, alpha, beta, drop_overlap, echoreel, callback,
        decode_clip=lambda k, latents: frames.append(decode_to_frames(model, latents)),
    )
    return torch.cat(frames)


def long_text_to_video(
    model: VideoModel,
    prompts: str | list[str],
    settings: SamplingSettings,
    num_clips: int,
    overlap: int = 4,
    alpha: float = 4.0,
    beta: float = 0.4,
    drop_overlap: bool = False,
    negative_prompt: str = "",
    echoreel: Guidance = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Prompts (one for all clips or one per clip) -> frames (T, h, w, 3) in [0, 1].

    T = num_clips * settings.frames, or that minus (num_clips - 1) * overlap with drop_overlap.
    A single EchoReel guidance applies its features (computed for one prompt) to every clip.
    """
    if model.preset.is_i2v:
        raise ValueError(f"{model.preset.name} is an image-to-video model: use long_image_to_video")
    check_request(model, settings, clips=num_clips)
    conds = _encode_prompts(model, _per_clip(prompts, num_clips))
    uncond = model.encode_text([negative_prompt])
    return generate_long_video(
        model, conds, uncond, settings, overlap, alpha, beta, drop_overlap, echoreel, callback
    )


def long_image_to_video(
    model: VideoModel,
    image: torch.Tensor,
    prompts: str | list[str],
    settings: SamplingSettings,
    num_clips: int,
    overlap: int = 4,
    alpha: float = 4.0,
    beta: float = 0.4,
    drop_overlap: bool = False,
    negative_prompt: str = "",
    echoreel: Guidance = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """An image (H, W, 3) in [0, 1], the same for every clip, and prompts -> frames (T, h, w, 3)."""
    if not model.preset.is_i2v:
        raise ValueError(f"{model.preset.name} is a text-to-video model: use long_text_to_video")
    check_request(model, settings, clips=num_clips)
    prompts = _per_clip(prompts, num_clips)  # checked before the image encoder runs
    image_tokens = model.encode_image(prepare_image(image, settings.height, settings.width))
    conds = [torch.cat([text, image_tokens], dim=1) for text in _encode_prompts(model, prompts)]
    uncond = torch.cat([model.encode_text([negative_prompt]), model.encode_image(None)], dim=1)
    return generate_long_video(
        model, conds, uncond, settings, overlap, alpha, beta, drop_overlap, echoreel, callback
    )
