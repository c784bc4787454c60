"""DPM++ 2M on the karras schedule, as ComfyUI's KSampler runs it on the pack's native model.

Why it is here: the core never imports comfy, yet the toy's motion transfer "through KSampler with
DPM++ 2M" has to be measured by the core (toy.evaluate). So this module is the same arithmetic
over the same parameterisation as nodes/model.py's VideoModelSampling, and
tests/test_native_sampling.py holds it equal to ComfyUI's own KSampler (sampler `dpmpp_2m`,
scheduler `karras`) on the native MODEL, within float rounding.

The parameterisation (k-diffusion's, over the checkpoint's stored abar_t and optional s_t):
- x_k = x_vp / (sqrt(abar_t) * s_t) = x0 + sigma'_t * eps with sigma'_t = sqrt((1 - abar_t) / abar_t) / s_t
  (s_t = 1 without `scale_arr`), kept as float32 sigmas and log-sigmas per timestep;
- a continuous sigma is given to the UNet at its nearest timestep in log sigma, and the UNet input is
  x_k * sqrt(abar_t) * s_t at that timestep for scale_arr models (the official x_vp exactly), and
  x_k / sqrt(1 + sigma^2) at the continuous sigma otherwise (ComfyUI's EPS);
- sampling from pure noise starts at x_k = noise * sqrt(1 + sigma_max^2), or noise / (sqrt(abar_T) s_T)
  with scale_arr (both: x_vp = the noise itself, the official start);
- the model's x0 is x_k - sigma * eps; the result is the last x0 (sigma 0), the clean latent.
Percents of the schedule (EchoReel's window) become sigmas as ComfyUI's percent_to_sigma does: the
log sigma interpolated at timestep (1 - p) * (T - 1), with p <= 0 and p >= 1 open ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .ddim import Denoiser, NonFiniteError, StepCallback
from .schedule import NoiseSchedule

# x0_model(x_k (b, c, t, h, w) in float32, sigma (0-d float32)) -> the predicted clean latent x0, same shape
X0Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

KARRAS_RHO = 7.0


@dataclass(frozen=True)
class SigmaTable:
    """The discrete sigma'_t of a schedule (float32, (T,), ascending in t) and what maps a sigma back
    to the UNet's input: abar_t and s_t as stored (float32)."""

    sigmas: torch.Tensor
    log_sigmas: torch.Tensor
    alphas_cumprod: torch.Tensor
    scale_arr: torch.Tensor | None

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])


def sigma_table(schedule: NoiseSchedule) -> SigmaTable:
    """sigma'_t = sqrt((1 - abar_t) / abar_t) / s_t in float64 from the float32 stored arrays, then
    rounded to float32 (the log taken before rounding), as the native model stores them."""
    abar = schedule.alphas_cumprod.float().cpu()
    scale = None if schedule.scale_arr is None else schedule.scale_arr.float().cpu()[: abar.shape[0]]
    sigmas = ((1 - abar.double()) / abar.double()).sqrt()
    if scale is not None:
        sigmas = sigmas / scale.double()
    return SigmaTable(sigmas.float(), sigmas.log().float(), abar, scale)


def timestep_of(table: SigmaTable, sigma: torch.Tensor) -> torch.Tensor:
    """The timestep whose log sigma is nearest to log(sigma), for a sigma of any shape (long)."""
    distance = (sigma.float().cpu().log().reshape(-1)[None] - table.log_sigmas[:, None]).abs()
    return distance.argmin(dim=0).reshape(sigma.shape)


def sigma_at(table: SigmaTable, timestep: float) -> torch.Tensor:
    """The sigma at a fractional timestep: log sigma interpolated linearly between its neighbours (float32)."""
    t = torch.tensor(timestep, dtype=torch.float32).clamp(0, table.sigmas.shape[0] - 1)
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    return ((1 - w) * table.log_sigmas[low] + w * table.log_sigmas[high]).exp()


def percent_to_sigma(table: SigmaTable, percent: float) -> float:
    """A percent of the schedule as a sigma (0: the noisiest end, open; 1: the clean end, open)."""
    if percent <= 0.0:
        return math.inf
    if percent >= 1.0:
        return 0.0
    return float(sigma_at(table, (1.0 - percent) * (table.sigmas.shape[0] - 1)))


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = KARRAS_RHO) -> torch.Tensor:
    """Karras et al. (2022): sigmas evenly spaced in sigma^(1/rho) from sigma_max to sigma_min, then 0;
    (steps + 1,) float32, noisiest first."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    ramp = torch.linspace(0, 1, steps)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(high + ramp * (low - high)) ** rho, ramp.new_zeros(1)])


def karras_schedule(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """The karras sigmas between the model's own smallest and largest sigma'."""
    table = sigma_table(schedule)
    return karras_sigmas(steps, table.sigma_min, table.sigma_max)


def vp_scale(table: SigmaTable, sigma: torch.Tensor) -> torch.Tensor:
    """sqrt(abar_t) * s_t at sigma's nearest timestep, shaped like sigma: x_vp = x_k * vp_scale."""
    t = timestep_of(table, sigma)
    scale = table.alphas_cumprod[t].sqrt()
    if table.scale_arr is not None:
        scale = scale * table.scale_arr[t]
    return scale.to(sigma.device)


def model_input(table: SigmaTable, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """What the UNet is given for x_k at sigma (module docstring)."""
    if table.scale_arr is not None:
        return x * vp_scale(table, sigma)
    return x / (sigma**2 + 1.0) ** 0.5


def start_from_noise(table: SigmaTable, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_k at the first sigma (the schedule's largest) from the seed's noise: x_vp = noise."""
    if table.scale_arr is not None:
        return noise / vp_scale(table, sigma)
    return noise * torch.sqrt(1.0 + sigma**2.0)


def x0_model(denoise: Denoiser, table: SigmaTable, dtype: torch.dtype = torch.float32) -> X0Model:
    """An eps denoiser over (x_vp, timesteps) as a model of x0 over (x_k, sigma): the UNet sees the
    input in `dtype` (its compute dtype), the sampler keeps float32 (as ComfyUI does)."""

    def predict(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        timesteps = timestep_of(table, sigma).expand(x.shape[0]).to(x.device)
        eps = denoise(model_input(table, x, sigma).to(dtype), timesteps).float()
        return x - eps * sigma

    return predict


def sample_dpmpp_2m(
    model: X0Model, x: torch.Tensor, sigmas: torch.Tensor, callback: StepCallback | None = None
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), deterministic, over the half log-SNR lambda = -log sigma.

    Each step moves x_k from sigma to sigma_next along the exact linear part (ratio of sigmas) plus
    (1 - e^-h) times the x0 estimate, h = lambda_next - lambda. From the second step the estimate is
    extrapolated from this and the previous x0 with r = h_prev / h, a second-order multistep
    correction; the first step and the step to sigma 0 use the plain estimate, and the step to 0
    returns it. sigmas: (n + 1,) float32, noisiest first, ending in 0. callback(i, x after, x0)."""
    previous = None
    sigmas = sigmas.to(x.device)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        lam, lam_next = -sigma.log(), -sigma_next.log()  # one scalar at a time: the same rounding as ComfyUI's
        h = lam_next - lam
        estimate = denoised
        if previous is not None and float(sigma_next) != 0.0:
            r = (lam - (-sigmas[i - 1].log())) / h
            estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = ((-lam_next).exp() / (-lam).exp()) * x - (-h).expm1() * estimate
        previous = denoised
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError(
                f"sampling produced NaN/Inf latents at DPM++ 2M step {i + 1} of {len(sigmas) - 1} "
                f"(sigma {float(sigma):.4g}): the model or its inputs overflow in this dtype; try fp32 or bf16 "
                "weights, a lower cfg or EchoReel strength")
        if callback is not None:
            callback(i, x, denoised)
    return x
