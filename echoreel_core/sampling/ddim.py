"""DDIM exactly as the official VideoCrafter/LVDM sampler runs it, as small functions over tensors.

Official details that matter for reproduction:
- the grid is range(0, T, T // S) + 1, so S=50 gives 1, 21, ..., 981 and S=30 gives 31 steps;
- the last step targets abar[0] (0.99915), not 1;
- sigma = eta * sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev)), eta = 1 by default;
- fresh noise is drawn at every step, even when eta = 0, so the RNG order never depends on eta;
- with `scale_arr`, x0 is divided by s_t and the target multiplied by s_prev;
- the result is the last x_prev, not the predicted x0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .schedule import NoiseSchedule

# denoise(x_t (b, c, t, h, w), timesteps (b,)) -> predicted eps, same shape as x_t
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# callback(step index from 0, x_t after the step, predicted x0); raising from it cancels sampling
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """Ascending official grid: range(0, T, T // S) + 1 (no check that its length is S, as official).

    Fixed official bug: when T - 1 is a multiple of T // S (S = 3, 9, 27, 37, 111, 333, 1000 for
    T = 1000) the grid reaches t = T, past the end of the schedule, and the official sampler
    crashes; that step is clamped to T - 1.
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"steps must be in 1..{num_train_timesteps}, got {num_steps}")
    grid = torch.arange(0, num_train_timesteps, num_train_timesteps // num_steps) + 1
    return grid.clamp(max=num_train_timesteps - 1)


@dataclass(frozen=True)
class DDIMStep:
    """The float32 coefficients of one step, in sampling order (noisiest first)."""

    timestep: int
    alpha: torch.Tensor
    alpha_prev: torch.Tensor
    sigma: torch.Tensor
    scale: torch.Tensor
    scale_prev: torch.Tensor


def ddim_schedule(schedule: NoiseSchedule, num_steps: int, eta: float = 1.0) -> list[DDIMStep]:
    """Per-step coefficients of the official S-step grid, noisiest step first."""
    return ddim_steps(schedule, ddim_timesteps(num_steps, schedule.num_timesteps), eta)


def ddim_steps(schedule: NoiseSchedule, grid: torch.Tensor, eta: float = 1.0) -> list[DDIMStep]:
    """Per-step coefficients for an ascending timestep grid from the stored abar (and s_t),
    noisiest step first: each step targets the next lower grid point, the lowest targets abar[0]
    (as official). Also used with the timesteps of a ComfyUI sigma schedule."""
    abar = schedule.alphas_cumprod.float().cpu()
    alphas = abar[grid]
    alphas_prev = torch.cat([abar[:1], abar[grid[:-1]]])
    a, a_prev = alphas.double(), alphas_prev.double()
    sigmas = (eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()).float()
    if schedule.scale_arr is not None:
        scale_arr = schedule.scale_arr.float().cpu()
        scales, scales_prev = scale_arr[grid], torch.cat([scale_arr[:1], scale_arr[grid[:-1]]])
    else:
        scales = scales_prev = torch.ones_like(alphas)
    steps = [
        DDIMStep(int(grid[k]), alphas[k], alphas_prev[k], sigmas[k], scales[k], scales_prev[k])
        for k in range(len(grid))
    ]
    return steps[::-1]


def ddim_step(x: torch.Tensor, eps: torch.Tensor, step: DDIMStep, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update: returns (x_prev, predicted x0)."""
    a, a_prev, sigma = (v.to(x.device) for v in (step.alpha, step.alpha_prev, step.sigma))
    x0 = (x - (1.0 - a).sqrt() * eps) / a.sqrt()
    x0 = x0 / step.scale.to(x.device)
    direction = (1.0 - a_prev - sigma**2).sqrt() * eps
    x_prev = a_prev.sqrt() * step.scale_prev.to(x.device) * x0 + direction + sigma * noise
    return x_prev, x0


class NonFiniteError(FloatingPointError):
    """NaN or Inf appeared where a run cannot recover from it; the message says where."""


def check_finite_latents(x: torch.Tensor, index: int, steps: list[DDIMStep], where: str = "") -> None:
    """Stop at the first step whose latents hold NaN or Inf: every later step and the decoded
    video would be NaN (written as a black video). One reduction per step, nothing measurable."""
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(
            f"sampling produced NaN/Inf latents at {where}step {index + 1} of {len(steps)} (timestep {steps[index].timestep}): "
            "the model or its inputs overflow in this dtype; try fp32 or bf16 weights, a lower cfg or EchoReel strength"
        )


def randn(shape, generator: torch.Generator | None, like: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device (CPU by default) and then moved, so that a
    seed gives the same noise on every compute device."""
    noise_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(shape, generator=generator, device=noise_device, dtype=torch.float32)
    target = like.device if like is not None else device
    return noise.to(target) if target is not None else noise


def sample_ddim(
    denoise: Denoiser,
    x_T: torch.Tensor,
    steps: list[DDIMStep],
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run the DDIM chain from x_T (b, c, t, h, w); one noise draw per step, as official."""
    x = x_T
    for index, step in enumerate(steps):
        timesteps = torch.full((x.shape[0],), step.timestep, device=x.device, dtype=torch.long)
        eps = denoise(x, timesteps)
        x, x0 = ddim_step(x, eps.to(x.dtype), step, randn(x.shape, generator, like=x).to(x.dtype))
        check_finite_latents(x, index, steps)
        if callback is not None:
            callback(index, x, x0)
    return x
