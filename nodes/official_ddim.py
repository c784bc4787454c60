"""The official VideoCrafter/LVDM DDIM as a ComfyUI SAMPLER (comfy.samplers.KSAMPLER).

It runs inside ComfyUI's sampling (CFG, conditioning, model patches, previews), so the native
MODEL with EchoReel or any other patch samples exactly as the official code does:
- the start is x_vp = the raw noise (ComfyUI's KSampler starts from sigma * noise, 0.9971x at t = 981);
- each step is the core's `ddim_step` on the model's stored abar and s_t, the last targets
  abar[0] with noise, and the result is that x_prev, not the predicted x0;
- one noise stream: the seed's CPU generator, whose first draw is the initial noise (what
  ComfyUI's RandomNoise draws) and every later draw a step's noise.
What stays ComfyUI's: the model is asked for x0 with CFG applied (linear in eps, so the same
guidance), and eps is recovered from it as (x - x0) / sigma: float rounding only.
With the sigmas of `ddim_uniform` (or the VideoCrafter Sampler's own) the grid is the official one.
"""

from __future__ import annotations

import comfy.samplers
import torch

from ..echoreel_core.sampling.ddim import check_finite_latents, ddim_step, ddim_steps, ddim_timesteps
from ..echoreel_core.sampling.schedule import NoiseSchedule
from .model import VideoModelSampling


def official_ddim_sigmas(model_sampling: VideoModelSampling, steps: int) -> torch.Tensor:
    """The official grid range(0, T, T // S) + 1 as ComfyUI sigmas, noisiest first, ending in 0."""
    grid = ddim_timesteps(steps, model_sampling.num_timesteps)
    return torch.cat([model_sampling.sigmas[grid.flip(0)], torch.zeros(1)])


def sample_official_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0):
    """A KSAMPLER sampler function: x is the noise-scaled start in ComfyUI's space (x_k), `model`
    ComfyUI's inpaint-aware wrapper returning the guided x0."""
    extra_args = extra_args or {}
    sampling = model.inner_model.inner_model.model_sampling
    if not isinstance(sampling, VideoModelSampling):
        raise ValueError("the official VideoCrafter DDIM samples only models from Load VideoCrafter Checkpoint")
    schedule = NoiseSchedule(sampling.alphas_cumprod.cpu(), None if sampling.scale_arr is None else sampling.scale_arr.cpu())
    final = float(sigmas[-1])
    timesteps = sampling.timestep(sigmas[sigmas > 0].float()).cpu().long()  # noisiest first
    steps = ddim_steps(schedule, timesteps.flip(0), eta)
    if final > 0:
        steps = steps[:-1]  # the last sigma is only the target (a split schedule)
    generator = torch.Generator("cpu").manual_seed(int(extra_args.get("seed", 0)))
    start_noise = torch.randn(x.shape, generator=generator, dtype=torch.float32)  # = the initial noise
    s_in = x.new_ones([x.shape[0]])
    empty = getattr(model, "latent_image", None)
    if empty is not None and not bool(torch.any(empty != 0)) and bool(torch.equal(model.noise.cpu().float(), start_noise)):
        x_vp = model.noise.to(x)  # the official start: pure noise in the model's own space
    else:
        x_vp = x * _scale(sampling, sigmas[0], x)
    for index, step in enumerate(steps):
        sigma = sigmas[index]
        x_k = x_vp / _scale(sampling, sigma, x)
        denoised = model(x_k, sigma * s_in, **extra_args)
        eps = (x_k - denoised) / sigma
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x)
        x_vp, x0 = ddim_step(x_vp, eps, step, noise)
        check_finite_latents(x_vp, index, steps)
        if callback is not None:
            callback({"x": x_vp, "i": index, "sigma": sigma, "sigma_hat": sigma, "denoised": x0})
    return x_vp / _scale(sampling, sigmas[-1], x) if final > 0 else x_vp


def _scale(sampling: VideoModelSampling, sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """sqrt(abar_t) * s_t at sigma (x_vp = x_k * scale)."""
    return sampling.vp_scale(sigma.reshape(1).float()).to(like.device, like.dtype).reshape(())


def official_ddim_sampler(eta: float) -> comfy.samplers.KSAMPLER:
    return comfy.samplers.KSAMPLER(sample_official_ddim, extra_options={"eta": eta})
