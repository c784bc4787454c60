"""Prompt in, frames out: text-to-video and image-to-video on a loaded VideoModel.

Classifier-free guidance runs the conditional and unconditional branches in one batched UNet
call (numerically the official two calls); the unconditional context is the empty prompt (or
the negative prompt) and, for I2V, the tokens of a mid-grey image, as official.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..echoreel.features import ActionFeatures
from ..echoreel.weights import EchoReel
from .memory import check_fits, estimate_sampling_memory
from ..models.ops import compute_dtype, module_device
from ..models.video_model import VideoModel
from ..sampling.ddim import Denoiser, StepCallback, ddim_schedule, randn, sample_ddim
from ..sampling.dpmpp import (SigmaTable, X0Model, karras_schedule, percent_to_sigma, sample_dpmpp_2m, sigma_table,
                              start_from_noise, x0_model)

# "ddim": the official sampler (steps on the official grid, eta); "dpmpp_2m": ComfyUI's DPM++ 2M on the
# karras schedule (deterministic, eta unused), what KSampler runs with those names (sampling/dpmpp.py)
SAMPLERS = ("ddim", "dpmpp_2m")


@dataclass(frozen=True)
class SamplingSettings:
    height: int
    width: int
    frames: int = 16
    fps: int = 28
    steps: int = 50
    cfg: float = 12.0
    eta: float = 1.0
    seed: int = 123
    sampler: str = "ddim"  # SAMPLERS

    def validate(self, multiple: int) -> None:
        """Refuse sizes that cannot run, before any work: the latent must halve evenly at every level."""
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if min(self.height, self.width) < multiple or self.height % multiple or self.width % multiple:
            raise ValueError(f"height and width must be positive multiples of {multiple} for this model, "
                             f"got {self.width}x{self.height} (width x height)")
        if self.frames < 1 or self.steps < 1:
            raise ValueError(f"frames and steps must be at least 1, got {self.frames} and {self.steps}")


def size_multiple(model: VideoModel) -> int:
    """What height and width must be multiples of: the VAE, then each UNet level, halve them."""
    return 2 ** (len(model.preset.vae.ch_mult) - 1) * 2 ** (len(model.preset.unet.channel_mult) - 1)


def check_request(model: VideoModel, settings: SamplingSettings, batch: int = 1, clips: int = 1) -> None:
    """Sizes, then memory: a request that cannot run or would not fit is refused before any work,
    with the estimate and the limit (memory.py). `clips` > 1: a long video keeps every clip's frames."""
    settings.validate(size_multiple(model))
    estimate = estimate_sampling_memory(model.preset, batch, settings.frames, settings.height, settings.width,
                                        compute_dtype(model.unet))  # activations are in the compute dtype
    estimate = dataclasses.replace(estimate, output_bytes=estimate.output_bytes * clips)
    frames = f"{clips} clips of {settings.frames} frames" if clips > 1 else f"{settings.frames} frames"
    check_fits(estimate, module_device(model.unet),
               f"{frames} at {settings.width}x{settings.height} on {model.preset.name}")


@dataclass(frozen=True)
class EchoReelGuidance:
    """EchoReel for one sampling run: the weights, the action features of both branches, the
    strength of the injected residual, and the percents [start, end] of the schedule in which it
    is active (SamplingRun.windowed)."""

    weights: EchoReel
    features: ActionFeatures
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0


def guided_denoiser(
    unet: torch.nn.Module, cond: torch.Tensor, uncond: torch.Tensor | None, cfg: float, fps: torch.Tensor
) -> Denoiser:
    """eps = eps_u + cfg * (eps_c - eps_u), both branches in one batch; only the conditional
    branch when cfg == 1 (as official). cond/uncond: (b, L, c); fps: (b,)."""
    if uncond is None or cfg == 1.0:
        return lambda x, t: unet(x, t, cond, fps=fps)
    context = torch.cat([cond, uncond])
    fps2 = torch.cat([fps, fps])

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_cond, eps_uncond = unet(torch.cat([x, x]), torch.cat([t, t]), context, fps=fps2).chunk(2)
        return eps_uncond + cfg * (eps_cond - eps_uncond)

    return denoise


@dataclass(frozen=True)
class SamplingRun:
    """What one seeded run derives from the model and the settings, the same for one clip or many."""

    device: torch.device
    dtype: torch.dtype
    shape: tuple[int, ...]  # (b, c, t, h, w) of one clip's latents
    generator: torch.Generator  # CPU: the same noise on every device
    fps: torch.Tensor  # (b,)
    steps: list  # the DDIM steps (empty for another sampler)
    sampler: str = "ddim"
    sigmas: torch.Tensor | None = None  # dpmpp_2m: the karras sigmas (steps + 1,), noisiest first, ending in 0
    table: SigmaTable | None = None  # dpmpp_2m: the model's sigmas (sampling/dpmpp.py)

    @classmethod
    def prepare(cls, model: VideoModel, batch: int, settings: SamplingSettings,
                samplers: tuple[str, ...] = ("ddim",)) -> "SamplingRun":
        """Only `model.unet`, `model.preset` and `model.schedule` are used (the ComfyUI sampler passes
        just those); latents land on the UNet's device, in its compute dtype (ops.compute_dtype: the
        weights' dtype, unless they are fp8 or `unet.compute_dtype` is set). `samplers`: those the
        caller runs (the long-video loop is DDIM's alone)."""
        device = module_device(model.unet)
        f = 2 ** (len(model.preset.vae.ch_mult) - 1)
        settings.validate(size_multiple(model))
        if settings.sampler not in samplers:
            raise ValueError(f"this sampling runs only {', '.join(samplers)}, got sampler {settings.sampler!r}")
        common = dict(
            device=device,
            dtype=compute_dtype(model.unet),
            shape=(batch, model.preset.vae.embed_dim, settings.frames, settings.height // f, settings.width // f),
            generator=torch.Generator("cpu").manual_seed(settings.seed),
            fps=torch.full((batch,), settings.fps, dtype=torch.long, device=device),
        )
        if settings.sampler == "dpmpp_2m":
            return cls(**common, steps=[], sampler=settings.sampler,
                       sigmas=karras_schedule(model.schedule, settings.steps), table=sigma_table(model.schedule))
        return cls(**common, steps=ddim_schedule(model.schedule, settings.steps, settings.eta))

    def bind(self, attachment, guide: EchoReelGuidance, batched: bool) -> None:
        """Bind a guidance's features as the UNet batch holds its branches ([cond, uncond] or cond)."""
        features = guide.features
        tokens = torch.cat([features.cond, features.uncond]) if batched else features.cond
        attachment.bind(tokens.to(self.device, self.dtype), features.frames_per_reference)

    def windowed(self, denoise: Denoiser, attachment, guide: EchoReelGuidance, num_timesteps: int = 1000) -> Denoiser:
        """EchoReel on only for the steps within [start, end] of the schedule, with the guidance's
        strength: a percent p is timestep (1 - p) * (T - 1), as ComfyUI's percent_to_sigma, so the
        window is the same under this sampler and under any ComfyUI sampler (p <= 0 and p >= 1 are
        open ends there)."""
        first = (1 - guide.start) * (num_timesteps - 1) if guide.start > 0 else float("inf")
        last = (1 - guide.end) * (num_timesteps - 1) if guide.end < 1 else float("-inf")
        active = {s.timestep for s in self.steps if last <= s.timestep <= first}

        def step(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            attachment.strength = guide.strength
            attachment.active = int(t[0]) in active
            return denoise(x, t)

        return step

    def sigma_windowed(self, model: X0Model, attachment, guide: EchoReelGuidance) -> X0Model:
        """`windowed` for a sigma sampler: EchoReel on while the step's sigma lies in
        [sigma(end), sigma(start)], the comparison ComfyUI's patch makes (nodes/patch.py), so a
        sigma between two timesteps falls on the same side under both."""
        low, high = percent_to_sigma(self.table, guide.end), percent_to_sigma(self.table, guide.start)

        def step(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            attachment.strength = guide.strength
            attachment.active = guide.strength != 0.0 and low <= float(sigma) <= high
            return model(x, sigma)

        return step

    def sample_dpmpp_2m(self, denoise: Denoiser, callback: StepCallback | None = None,
                        window=None) -> torch.Tensor:
        """DPM++ 2M from the seed's noise (the same draw as DDIM's x_T and as ComfyUI's prepare_noise),
        float32 latents, the UNet in the run's dtype; `window(x0 model) -> x0 model` switches EchoReel.
        Returns the clean latents in the run's dtype."""
        noise = randn(self.shape, self.generator, device=self.device)
        model = x0_model(denoise, self.table, self.dtype)
        if window is not None:
            model = window(model)
        x = start_from_noise(self.table, noise, self.sigmas[0].to(self.device))
        return sample_dpmpp_2m(model, x, self.sigmas, callback).to(self.dtype)


@torch.no_grad()
def generate_latents(
    model: VideoModel,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    settings: SamplingSettings,
    callback: StepCallback | None = None,
    echoreel: EchoReelGuidance | None = None,
) -> torch.Tensor:
    """Sample latents (b, 4, t, h, w) for a text (and image) context (b, L, c); seeded on the CPU;
    with settings.sampler's sampler (SAMPLERS)."""
    run = SamplingRun.prepare(model, cond.shape[0], settings, SAMPLERS)
    uncond = uncond.to(run.device, run.dtype) if uncond is not None else None
    denoise = guided_denoiser(model.unet, cond.to(run.device, run.dtype), uncond, settings.cfg, run.fps)
    if run.sampler == "dpmpp_2m":
        if echoreel is None:
            return run.sample_dpmpp_2m(denoise, callback)
        with echoreel.weights.attach(model.preset, model.unet, echoreel.strength) as attachment:
            run.bind(attachment, echoreel, batched=uncond is not None and settings.cfg != 1.0)
            return run.sample_dpmpp_2m(denoise, callback,
                                       window=lambda m: run.sigma_windowed(m, attachment, echoreel))
    x_T = randn(run.shape, run.generator, device=run.device).to(run.dtype)
    if echoreel is None:
        return sample_ddim(denoise, x_T, run.steps, run.generator, callback)
    # attached only inside this run, detached whatever happens
    with echoreel.weights.attach(model.preset, model.unet, echoreel.strength) as attachment:
        run.bind(attachment, echoreel, batched=uncond is not None and settings.cfg != 1.0)
        return sample_ddim(run.windowed(denoise, attachment, echoreel), x_T, run.steps, run.generator, callback)


@torch.no_grad()
def decode_to_frames(model: VideoModel, latents: torch.Tensor) -> torch.Tensor:
    """Latents (1, 4, t, h, w) -> frames (t, H, W, 3) in [0, 1] (clamped as the official saver)."""
    video = model.vae.decode_video(latents)[0]  # (3, t, H, W) in about [-1, 1]
    return ((video.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).cpu()


def prepare_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """I2V input (H, W, 3) in [0, 1] -> (1, 3, height, width) in [-1, 1], bilinear like the official cv2 resize."""
    pixels = image.permute(2, 0, 1)[None].float()
    pixels = F.interpolate(pixels, size=(height, width), mode="bilinear", align_corners=False)
    return pixels * 2 - 1


def text_to_video(
    model: VideoModel,
    prompt: str,
    settings: SamplingSettings,
    negative_prompt: str = "",
    callback: StepCallback | None = None,
    echoreel: EchoReelGuidance | None = None,
) -> torch.Tensor:
    """A prompt -> frames (t, h, w, 3) in [0, 1]."""
    if model.preset.is_i2v:
        raise ValueError(f"{model.preset.name} is an image-to-video model: use image_to_video")
    check_request(model, settings)
    cond = model.encode_text([prompt])
    uncond = model.encode_text([negative_prompt])
    return decode_to_frames(model, generate_latents(model, cond, uncond, settings, callback, echoreel))


def image_to_video(
    model: VideoModel,
    image: torch.Tensor,
    prompt: str,
    settings: SamplingSettings,
    negative_prompt: str = "",
    callback: StepCallback | None = None,
    echoreel: EchoReelGuidance | None = None,
) -> torch.Tensor:
    """An image (H, W, 3) in [0, 1] and a prompt -> frames (t, h, w, 3) in [0, 1]."""
    if not model.preset.is_i2v:
        raise ValueError(f"{model.preset.name} is a text-to-video model: use text_to_video")
    check_request(model, settings)
    pixels = prepare_image(image, settings.height, settings.width)
    cond = torch.cat([model.encode_text([prompt]), model.encode_image(pixels)], dim=1)
    uncond = torch.cat([model.encode_text([negative_prompt]), model.encode_image(None)], dim=1)
    return decode_to_frames(model, generate_latents(model, cond, uncond, settings, callback, echoreel))
