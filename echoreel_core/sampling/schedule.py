"""The official noise schedule: scaled-linear betas, eps parameterisation, and `scale_arr`.

VideoCrafter2, I2V and VideoCrafter1-1024 train with a per-timestep scale s_t on the data term,
x_t = sqrt(abar_t) * s_t * x0 + sqrt(1 - abar_t) * eps. The official files store `alphas_cumprod`
and `scale_arr` as buffers and the sampler reads those stored values; the fp16 I2V file holds
fp16-rounded ones, so a loaded checkpoint's arrays are kept exactly as stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SCALE_MID_STEP = 400  # s_t ramps linearly from 1 to scale_b over the first 400 timesteps


def official_alphas_cumprod(linear_start=0.00085, linear_end=0.012, timesteps=1000) -> torch.Tensor:
    """abar = cumprod(1 - beta), beta = linspace(sqrt(start), sqrt(end))**2; float64 math, float32 result.
    Always on the CPU, also inside a `torch.device("meta")` block: a schedule is data, never a placeholder."""
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64, device="cpu") ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def official_scale_arr(scale_b: float, timesteps=1000, fix_scale_bug=True) -> torch.Tensor:
    """s_t = linspace(1, scale_b, 400) then scale_b. The official bug (VideoCrafter2, I2V) makes the
    constant part `timesteps` long instead of `timesteps - 400`: a 1400-long array whose first
    1000 values are the same. On the CPU, as official_alphas_cumprod."""
    constant = timesteps - SCALE_MID_STEP if fix_scale_bug else timesteps
    ramp = torch.linspace(1.0, scale_b, SCALE_MID_STEP, dtype=torch.float64, device="cpu")
    return torch.cat([ramp, torch.full((constant,), scale_b, dtype=torch.float64, device="cpu")]).float()


@dataclass
class NoiseSchedule:
    """What the sampler and the training loss need: abar_t and the optional s_t, as float32 (T,)."""

    alphas_cumprod: torch.Tensor
    scale_arr: torch.Tensor | None = None

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise clean latents (b, c, t, h, w) to timesteps t (b,) as the official training does."""
        shape = (-1,) + (1,) * (x0.dim() - 1)
        abar = self.alphas_cumprod.to(x0.device)[t].view(shape).to(x0.dtype)
        data = abar.sqrt() * x0
        if self.scale_arr is not None:
            data = data * self.scale_arr.to(x0.device)[t].view(shape).to(x0.dtype)
        return data + (1.0 - abar).sqrt() * noise
