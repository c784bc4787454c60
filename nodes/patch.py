"""EchoReel as a model patch: what Apply EchoReel to Model puts on a clone of the MODEL.

The patch runs at every integration site of the native UNet (model.SITE_PATCH) under any ComfyUI
sampler. Per call it reads from the sampler's `transformer_options`:
- `cond_or_uncond`: the branch of each chunk of rows, in the order the sampler batched them
  (not fixed: [1, 0] occurs), so every chunk attends to its own branch's action features;
- `sigmas`: the step's sigma, active only within [end_sigma, start_sigma] (ComfyUI's percent of
  the schedule, as its own start/end inputs), and, with a schedule, the curve's value at the
  step's percent (`sigma_to_percent`: the inverse of the model_sampling's own percent_to_sigma,
  so a curve and the start/end window agree under every sampler and scheduler).
The residual is scaled by strength x schedule and, with frame weights or a mask, by a weight per
frame and latent cell of the site's grid (echoreel_core/echoreel/control.py), then added.
The reference keys/values are projected once per site, branch, device and dtype and reused at every
step (the Prism's output does not depend on the timestep). Facts: comfyui-native.md §3.

Every run is logged (echoreel_core/echoreel/report.py): an OUTER_SAMPLE wrapper, keyed on the
patched clone, clears the counts when a sampler starts and reports when it returns, and refuses a
run in which no integration layer ran although EchoReel was due to act in it.
"""

from __future__ import annotations

import logging

import torch
from comfy.model_patcher import ModelPatcher

from ..echoreel_core.echoreel.control import Curve, site_weights, weighted_residual
from ..echoreel_core.echoreel.features import ActionFeatures
from ..echoreel_core.echoreel.report import InjectionError, InjectionLog, InjectionReport
from ..echoreel_core.models.ops import compute_dtype
from .model import SITE_PATCH

REPORT_KEY = "echoreel_injection_report"  # the OUTER_SAMPLE wrapper's key on the patched clone


def sigma_to_percent(model_sampling, sigma: float, iterations: int = 48) -> float:
    """The percent p with model_sampling.percent_to_sigma(p) == sigma, by bisection (percent_to_sigma
    decreases from p = 0 to p = 1 on every ComfyUI model_sampling). Sigmas above percent 0's are 0."""
    low, high = 0.0, 1.0
    if sigma >= model_sampling.percent_to_sigma(1e-9):
        return 0.0
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        if model_sampling.percent_to_sigma(middle) > sigma:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


class EchoReelPatch:
    """x + strength * schedule(percent) * weights * integration residual at each site, for one set of
    EchoReel weights and features."""

    def __init__(self, weights: ModelPatcher, features: ActionFeatures, strength: float, start: float, end: float,
                 model_sampling, site_paths: list[str], schedule: Curve | None = None,
                 frame_curve: Curve | None = None, mask: torch.Tensor | None = None):
        self.weights = weights  # wraps an echoreel_core EchoReel
        self.features = features
        self.strength = strength
        self.start, self.end = start, end  # percents of the schedule
        self.model_sampling = model_sampling
        self.sigma_start = model_sampling.percent_to_sigma(start)
        self.sigma_end = model_sampling.percent_to_sigma(end)
        self.schedule = schedule  # strength multiplier over the percent, or None
        self.frame_curve = frame_curve  # weight over the frame index, or None
        self.mask = mask  # (1 or t, H, W) float32, or None
        self.log = InjectionLog(site_paths)
        self.last_report: InjectionReport | None = None
        self._projected: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._percents: dict[float, float] = {}
        self._weights: dict[tuple, torch.Tensor | None] = {}

    @property
    def controls(self) -> list[str]:
        """The inputs beyond strength and window that shape the injection."""
        return [name for name, value in (("schedule", self.schedule), ("frame_weights", self.frame_curve),
                                         ("mask", self.mask)) if value is not None]

    # ---- what ModelPatcher asks of a patch object ----
    def models(self) -> list[ModelPatcher]:
        """Loaded by ComfyUI together with the UNet (load_models_gpu)."""
        return [self.weights]

    def to(self, device_or_dtype):
        return self  # the weights move with their own patcher; projections are cached per device and dtype

    def __deepcopy__(self, memo):
        return self  # ComfyUI 0.3.75 deep-copies model_options on every clone: share, never copy, the weights

    # ---- the patch ----
    def percent(self, sigma: float) -> float:
        if sigma not in self._percents:
            self._percents[sigma] = sigma_to_percent(self.model_sampling, sigma)
        return self._percents[sigma]

    def scale(self, sigma: float) -> float:
        """strength x the schedule's value at this sigma; 0 outside [start, end]."""
        if self.strength == 0.0 or not self.sigma_end <= sigma <= self.sigma_start:
            return 0.0
        if self.schedule is None:
            return self.strength
        return self.strength * self.schedule(self.percent(sigma))

    def __call__(self, tokens: torch.Tensor, options: dict) -> torch.Tensor:
        # tokens: ((b h w), t, c), rows grouped by sample; options: transformer_options + the site
        sigma = float(options["sigmas"].reshape(-1)[0])
        self.log.saw(sigma)
        scale = self.scale(sigma)
        if scale == 0.0:
            return tokens
        site, grid = options["echoreel_site"], options["echoreel_grid"]
        layer = self.weights.model.integration[site]
        chunks = options["cond_or_uncond"]
        samples = tokens.shape[0] // (grid[0] * grid[1])
        if samples % len(chunks):
            raise ValueError(f"{samples} samples in the UNet call do not split into the sampler's {len(chunks)} chunks")
        per_chunk = samples // len(chunks)
        dtype = compute_dtype(layer, tokens)
        keys, values = self.bank(site, layer, chunks, per_chunk, tokens.device, dtype)
        positions = torch.arange(keys.shape[1], device=tokens.device) % self.features.frames_per_reference
        residual = layer(tokens.to(dtype), keys, values, positions, grid)
        weights = self.site_weights(tuple(grid), tokens.shape[1], tokens.device, tokens.dtype)
        added = weighted_residual(residual.to(tokens.dtype), scale, weights, grid[0] * grid[1])
        self.log.ran(site, sigma, self.percent(sigma), added, tokens)
        return tokens + added

    def site_weights(self, grid: tuple[int, int], frames: int, device, dtype) -> torch.Tensor | None:
        """Mask x frame weights on this grid, ((h w) or 1, t or 1, 1), cached per grid, frames, device, dtype."""
        key = (grid, frames, device, dtype)
        if key not in self._weights:
            weights = site_weights(grid, frames, self.mask, self.frame_curve)
            self._weights[key] = None if weights is None else weights.to(device, dtype)
        return self._weights[key]

    def bank(self, site: int, layer, chunks: list[int], per_chunk: int, device, dtype):
        """Keys and values (samples, n_ref, c): for each chunk its branch's features, per sample
        (features of batch 1 are shared by all samples of a chunk, of batch B are per sample)."""
        parts = [self.project(site, layer, branch, device, dtype) for branch in chunks]
        keys, values = [], []
        for k, v in parts:
            if k.shape[0] not in (1, per_chunk):
                raise ValueError(f"the action features hold {k.shape[0]} samples, the latent batch is {per_chunk}: "
                                 "encode one reference set per sample or one for all")
            keys.append(k.expand(per_chunk, -1, -1))
            values.append(v.expand(per_chunk, -1, -1))
        return torch.cat(keys), torch.cat(values)

    def project(self, site: int, layer, branch: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (site, branch, device, dtype)
        if key not in self._projected:
            tokens = self.features.cond if branch == 0 else self.features.uncond  # (b_f, n_ref, tout_dim)
            with torch.no_grad():
                self._projected[key] = layer.project_reference(tokens.to(device, dtype))
        return self._projected[key]

    # ---- the injection report ----
    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        """OUTER_SAMPLE wrapper: one sampler run, counted from its start to its return."""
        self.log.reset()
        self.last_report = None
        out = executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        self.finish(sigmas)
        return out

    def due(self, sigmas: torch.Tensor) -> bool:
        """Whether EchoReel was due to act in a run over these sigmas: strength and the schedule's
        peak above 0, and the run's sigma range meeting the [start, end] window (a run over another
        part of the schedule, as in a split-sigmas workflow, is not due)."""
        peak = 1.0 if self.schedule is None else self.schedule.peak
        low, high = float(sigmas.min()), float(sigmas.max())
        return self.strength * peak > 0 and high >= self.sigma_end and low <= self.sigma_start

    def finish(self, sigmas: torch.Tensor) -> InjectionReport:
        report = self.log.report()
        self.last_report = report
        if report.layer_steps == 0 and self.due(sigmas):
            percents = sorted(self.percent(s) for s in self.log.seen)
            shown = ", ".join(f"{p:.3f}" for p in percents[:12]) + (" ..." if len(percents) > 12 else "")
            window = f"start_percent {self.start:g}, end_percent {self.end:g}"
            curve = "" if self.schedule is None else f", schedule {self.schedule.text()}"
            raise InjectionError(
                f"Apply EchoReel to Model: no integration layer ran in this sampling run ({window}{curve}, strength "
                f"{self.strength:g}); the UNet was called at percents [{shown}], none inside the window with the "
                "schedule above 0: widen the window, add steps, or move the schedule's keyframes")
        text = report.text()
        (logging.warning if report.nonfinite else logging.info)("%s", text.replace("\n", " "))
        return report


def echoreel_patches(model: ModelPatcher) -> list[EchoReelPatch]:
    """The EchoReel patches on a MODEL (other packs' patches under the same key are not ours)."""
    patches = model.model_options.get("transformer_options", {}).get("patches", {}).get(SITE_PATCH, [])
    return [p for p in patches if isinstance(p, EchoReelPatch)]
