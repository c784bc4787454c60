"""EchoReel as a model patch: what Apply EchoReel to Model puts on a clone of the MODEL.

The patch runs at every integration site of the native UNet (model.SITE_PATCH) under any ComfyUI
sampler. Per call it reads from the sampler's `transformer_options`:
- `cond_or_uncond`: the branch of each chunk of rows, in the order the sampler batched them
  (not fixed: [1, 0] occurs), so every chunk attends to its own branch's action features;
- `sigmas`: the step's sigma, active only within [end_sigma, start_sigma] (ComfyUI's percent of
  the schedule, as its own start/end inputs).
The reference keys/values are projected once per site, branch, device and dtype and reused at every
step (the Prism's output does not depend on the timestep). Facts: comfyui-native.md §3.
"""

from __future__ import annotations

import torch
from comfy.model_patcher import ModelPatcher

from ..echoreel_core.echoreel.features import ActionFeatures
from ..echoreel_core.models.ops import compute_dtype


class EchoReelPatch:
    """x + strength * integration residual at each site, for one set of EchoReel weights and features."""

    def __init__(self, weights: ModelPatcher, features: ActionFeatures, strength: float, start: float, end: float,
                 model_sampling):
        self.weights = weights  # wraps an echoreel_core EchoReel
        self.features = features
        self.strength = strength
        self.start, self.end = start, end  # percents of the schedule
        self.sigma_start = model_sampling.percent_to_sigma(start)
        self.sigma_end = model_sampling.percent_to_sigma(end)
        self._projected: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # ---- what ModelPatcher asks of a patch object ----
    def models(self) -> list[ModelPatcher]:
        """Loaded by ComfyUI together with the UNet (load_models_gpu)."""
        return [self.weights]

    def to(self, device_or_dtype):
        return self  # the weights move with their own patcher; projections are cached per device and dtype

    def __deepcopy__(self, memo):
        return self  # ComfyUI 0.3.75 deep-copies model_options on every clone: share, never copy, the weights

    # ---- the patch ----
    def active(self, options: dict) -> bool:
        sigma = float(options["sigmas"].reshape(-1)[0])
        return self.strength != 0.0 and self.sigma_end <= sigma <= self.sigma_start

    def __call__(self, tokens: torch.Tensor, options: dict) -> torch.Tensor:
        # tokens: ((b h w), t, c), rows grouped by sample; options: transformer_options + the site
        if not self.active(options):
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
        return tokens + self.strength * residual.to(tokens.dtype)

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
