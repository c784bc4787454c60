"""Action features: the Prism's output for one sampling run, computed once.

The Prism sees only the clean reference latents, the reference caption and the prompt, never the
timestep or x_t, so its output is computed once per guidance branch and reused at every step.
The unconditional branch swaps the prompt for the negative (or empty) prompt and keeps the same
reference video and caption, as the official sampler does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models.autoencoder import AutoencoderKL
from ..sampling.ddim import NonFiniteError
from .weights import EchoReel


@dataclass(frozen=True)
class Reference:
    """One reference clip: clean scaled latents (1, c, t, h, w) and its caption's text context (1, L, D)."""

    latents: torch.Tensor
    caption: torch.Tensor


@dataclass(frozen=True)
class ActionFeatures:
    """Prism outputs per branch, (b, n_refs * t, tout_dim), references concatenated in order.

    info: where the features came from (source video, caption, prompts: str -> str), as a motion
    file records it (echoreel_core/motion); empty when unknown. It travels with the features so
    that a loaded motion saved again keeps its provenance; it never changes what they do, so it is
    left out of equality and hashing.
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    frames_per_reference: int
    info: dict[str, str] = field(default_factory=dict, compare=False)


@torch.no_grad()
def encode_reference(
    vae: AutoencoderKL, video: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
) -> torch.Tensor:
    """Reference video (1, 3, t, H, W) in [-1, 1] -> clean latents (1, c, t, h, w): a seeded VAE
    posterior sample times the scale factor, as official (sample=False takes the posterior mean)."""
    return vae.encode_video(video, generator=generator, sample=sample)


def prism_tokens(echoreel: EchoReel, prompt: torch.Tensor, references: list[Reference]) -> torch.Tensor:
    """Prism(cat(prompt, caption_n), latents_n) for each reference, concatenated on the frame axis.

    prompt: (b, L, D); each reference is broadcast over the batch. Returns (b, n_refs * t, tout_dim).
    Differentiable (training uses it); sampling goes through `action_features`, which is not.
    """
    if not references:
        raise ValueError("EchoReel needs at least one reference video")
    prism = echoreel.video_inject_process
    device = prism.video_to_latent.weight.device
    outputs = []
    for reference in references:
        caption = reference.caption.to(device).expand(prompt.shape[0], -1, -1)
        latents = reference.latents.to(device).expand(prompt.shape[0], -1, -1, -1, -1)
        outputs.append(prism(torch.cat([prompt.to(device), caption], dim=1), latents))
    return torch.cat(outputs, dim=1)


@torch.no_grad()
def action_features(
    echoreel: EchoReel, prompt: torch.Tensor, negative: torch.Tensor, references: list[Reference]
) -> ActionFeatures:
    """Both branches' features: two Prism passes per reference, the only ones in a sampling run."""
    frames = {r.latents.shape[2] for r in references}
    if len(frames) != 1:
        raise ValueError(f"all reference videos must have the same frame count, got {sorted(frames)}")
    features = ActionFeatures(
        cond=prism_tokens(echoreel, prompt, references),
        uncond=prism_tokens(echoreel, negative, references),
        frames_per_reference=frames.pop(),
    )
    for branch, tokens in (("prompt", features.cond), ("negative prompt", features.uncond)):
        if not bool(torch.isfinite(tokens).all()):
            bad = [i for i, r in enumerate(references) if not bool(torch.isfinite(r.latents).all())]
            cause = (f"reference latents {bad} already hold NaN/Inf (the VAE encode overflowed: use fp32 or bf16)"
                     if bad else "the Prism overflowed in this dtype (use fp32 or bf16 EchoReel weights)")
            raise NonFiniteError(f"the Action Prism's features for the {branch} branch hold NaN/Inf: {cause}")
    return features
