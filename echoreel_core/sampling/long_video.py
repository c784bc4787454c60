"""Videos longer than the model's clip: Reuse-and-Diffuse (VidRD, arXiv 2309.03549) over DDIM.

A long video is K clips of N frames, each sampled by the ordinary DDIM chain (`ddim.py`), tied
to the clip before it by three mechanisms (M = overlap frames, S = DDIM steps):

- FNR (frame-level noise reversion): frames j < M of clip k start from exactly the initial noise
  of frame N-1-j of clip k-1, so the new clip begins where the last one ended, played backwards.
- PNS (past-dependent noise sampling): frames j >= M start from
  alpha/sqrt(1+alpha^2) * (reversed previous noise) + eps, eps ~ N(0, 1/(1+alpha^2)): still unit
  variance, correlated with the past so the new clip's content stays close to the last.
- DSG (denoising with staged guidance): during the first steps, frame j < M of clip k is reset,
  before each UNet call, to the previous clip's input latent of frame N-1-j at the same step;
  frame 0 is pinned longest (to the previous clip's last frame), later frames are freed earlier.

Everything follows the official code (RD `model/pipeline.py`), not the paper's formula, where they
differ: the DSG window counts step *inputs* (the paper's is one step later), the PNS noise is drawn
for all N frames and only frames M.. used, and all N frames of every clip are kept (K*N frames;
`drop_overlap` drops the M guided frames of clips >= 1 instead).

Clip 0 is the ordinary sampler, draw for draw: with K = 1 the result equals `sample_ddim`
exactly. The RNG order per later clip is [one PNS draw] then [one draw per step], all from the
CPU generator, so a seed gives the same long video on any device.

History: the official code keeps all S step inputs of the previous clip (S full latents). Only
entry 0 (the reversed x_T, for FNR/PNS) is read in full, and DSG reads only frames < M of the
entries of its window (steps i < S*beta). Those are all this module keeps, and only while a
later clip will read them: entry 0 whole plus ceil(S*beta) - 1 entries of M frames (S=50, N=16,
M=4, beta=0.4: 5.75 latents' worth instead of 50), numerically identical to the official
bookkeeping.

Shapes are (b, c, t, h, w); t is the frame axis.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .ddim import DDIMStep, Denoiser, StepCallback, check_finite_latents, ddim_step, randn

# denoise_for_clip(k) -> the denoiser of clip k; called once, when clip k starts, before any of
# its UNet calls (so a caller can do per-clip set-up there: a prompt, EchoReel features)
ClipDenoisers = Callable[[int], Denoiser]
# decode_clip(k, latents (b, c, t, h, w)): called as soon as clip k is sampled
ClipSink = Callable[[int, torch.Tensor], None]


def fnr_pns_noise(
    previous_noise_reversed: torch.Tensor, overlap: int, alpha: float, generator: torch.Generator | None
) -> torch.Tensor:
    """The initial noise of clip k from R, the frame-reversed initial noise of clip k-1.

    Frames < M: R exactly (FNR). Frames >= M: alpha/sqrt(1+alpha^2) * R + eps (PNS), with
    eps ~ N(0, 1/(1+alpha^2)) so the result keeps unit variance. eps is drawn for all N frames,
    as the official code does, so the RNG advances by one full latent whatever M is; frames < M
    of that draw are discarded. The draw is on the generator's device (CPU) then moved.
    """
    reversed_noise = previous_noise_reversed  # (b, c, N, h, w)
    if not 0 <= overlap < reversed_noise.shape[2]:
        raise ValueError(f"overlap must be in 0..{reversed_noise.shape[2] - 1} (frames per clip - 1), got {overlap}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    norm = 1.0 / math.sqrt(1.0 + alpha * alpha)
    eps = randn(reversed_noise.shape, generator, like=reversed_noise) * norm  # (b, c, N, h, w), float32
    x = (alpha * norm) * reversed_noise.float() + eps
    x = x.to(reversed_noise.dtype)
    x[:, :, :overlap] = reversed_noise[:, :, :overlap]  # FNR: an exact copy, never recomputed
    return x


def dsg_window(step_index: int, frame_j: int, overlap: int, num_steps: int, beta: float) -> bool:
    """Whether frame j of a clip k >= 1 is reset to the previous clip's history before step i.

    Official form, a float comparison: j < M and i < (M - j) * (S / M) * beta. With S=50, M=4,
    beta=0.4 frames 0..3 are guided for 20, 15, 10 and 5 steps; frames >= M never.
    """
    if frame_j >= overlap:
        return False
    return step_index < (overlap - frame_j) * (num_steps / overlap) * beta


def _check(num_frames: int, num_clips: int, overlap: int, alpha: float, beta: float) -> None:
    if num_clips < 1:
        raise ValueError(f"num_clips must be at least 1, got {num_clips}")
    if not 0 <= overlap < num_frames:
        raise ValueError(f"overlap must be in 0..{num_frames - 1} (frames per clip - 1), got {overlap}")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], got {beta}")


def sample_long_video(
    denoise_for_clip: ClipDenoisers,
    x_shape_per_clip: tuple[int, ...],
    steps: list[DDIMStep],
    num_clips: int,
    overlap: int = 4,
    alpha: float = 4.0,
    beta: float = 0.4,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    decode_clip: ClipSink | None = None,
    drop_overlap: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor] | None:
    """Sample K clips of shape `x_shape_per_clip` (b, c, N, h, w) with FNR, PNS and DSG.

    `denoise_for_clip(k)` gives clip k's denoiser (per-clip prompts or references). `callback`
    gets a global step index k*S + i, so progress and cancelling (raise from it) span all clips.
    `decode_clip(k, latents)`, when given, receives each clip as soon as it is done and nothing
    is returned, so memory does not grow with K; otherwise the list of per-clip latents is
    returned. `drop_overlap` drops frames < M of clips >= 1 (the official code keeps them).
    x_T of clip 0 is drawn as `generate_latents` draws it: on the CPU generator, moved to
    `device`, cast to `dtype`.
    """
    num_frames = x_shape_per_clip[2]
    _check(num_frames, num_clips, overlap, alpha, beta)
    num_steps = len(steps)
    # the entries anyone reads: 0 (FNR/PNS of the next clip) and DSG's window (frame 0's is longest)
    kept = [i for i in range(num_steps) if i == 0 or dsg_window(i, 0, overlap, num_steps, beta)]
    history: dict[int, torch.Tensor] = {}  # step i -> reversed input of step i (entry 0 whole, others frames < M)
    clips: list[torch.Tensor] = []
    for k in range(num_clips):
        denoise = denoise_for_clip(k)
        if k == 0:
            x = randn(x_shape_per_clip, generator, device=device).to(dtype)  # the ordinary first draw
        else:
            x = fnr_pns_noise(history[0], overlap, alpha, generator)
        keep_history = k < num_clips - 1  # the last clip's history is never read
        for i, step in enumerate(steps):
            if k > 0:
                guided = [j for j in range(overlap) if dsg_window(i, j, overlap, num_steps, beta)]
                if guided:
                    x = x.clone()  # never write into a tensor already handed to the callback
                    x[:, :, guided] = history[i][:, :, guided]  # read before this clip overwrites it
            if keep_history and i in kept:
                # flip(x)[:, :, :M] is x[:, :, N-M:] reversed: all that DSG reads of entries > 0
                history[i] = x.flip(2) if i == 0 else x[:, :, num_frames - overlap :].flip(2)
            elif not keep_history:
                history.pop(i, None)  # read for the last time above
            timesteps = torch.full((x.shape[0],), step.timestep, device=x.device, dtype=torch.long)
            eps = denoise(x, timesteps)
            x, x0 = ddim_step(x, eps.to(x.dtype), step, randn(x.shape, generator, like=x).to(x.dtype))
            check_finite_latents(x, i, steps, f"clip {k + 1} of {num_clips}, ")
            if callback is not None:
                callback(k * num_steps + i, x, x0)
        clip = x[:, :, overlap:].contiguous() if drop_overlap and k > 0 else x  # a copy: x is not kept
        if decode_clip is not None:
            decode_clip(k, clip)
        else:
            clips.append(clip)
        del clip  # not held while the next clip samples
    return None if decode_clip is not None else clips
