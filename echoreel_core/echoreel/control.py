"""Where and how much motion is injected: keyframed curves, per-frame weights, region masks and
blends of action features. Pure functions of tensors, used by the node layer's model patch; any
sampler can use them, since each is evaluated from what a single UNet call knows (the step's
percent of the schedule, the video's frame count, the site's (h, w) grid).

Every weight multiplies the integration residual, never the hidden state, so a weight of 0
leaves the block's tokens exactly as the base model's (x + 0 * r == x for finite r).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .features import ActionFeatures


@dataclass(frozen=True)
class Curve:
    """A piecewise-linear curve through keyframes (x, y), x non-decreasing; constant before the
    first and after the last keyframe. Two keyframes at the same x make a step: from that x on, the
    later one's value holds (so `0.5:1, 0.5:0` is 1 before the middle and 0 from it)."""

    points: tuple[tuple[float, float], ...]

    def __call__(self, x: float) -> float:
        points = self.points
        if x < points[0][0]:
            return points[0][1]
        value = points[-1][1]
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            if x0 <= x < x1:
                value = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
                break
        return value

    @property
    def peak(self) -> float:
        """The largest value the curve takes (at a keyframe, since it is linear between them)."""
        return max(y for _, y in self.points)

    def text(self) -> str:
        return ", ".join(f"{x:g}:{y:g}" for x, y in self.points)


_ENTRY = re.compile(r"^\s*([-+0-9.eE]+)\s*:\s*([-+0-9.eE]+)\s*$")


def parse_curve(text: str, what: str, x_name: str, x_max: float | None = None) -> Curve:
    """Keyframes `x:y` separated by commas, semicolons or new lines, e.g. `0:1, 0.6:1, 0.8:0`.

    x must lie in [0, x_max] (x_max None: no upper bound) and not decrease; y must be finite and
    >= 0. Errors name `what`, the entry and what was expected."""
    entries = [e for e in re.split(r"[,;\n]", text) if e.strip()]
    if not entries:
        raise ValueError(f"{what}: no keyframes; expected `{x_name}:value` pairs such as `0:1, 0.5:0`")
    points = []
    for entry in entries:
        match = _ENTRY.match(entry)
        try:
            x, y = (float(match.group(1)), float(match.group(2))) if match else (None, None)
        except ValueError:
            x = y = None
        if x is None or not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"{what}: {entry.strip()!r} is not `{x_name}:value` (two numbers, e.g. `0.5:1`)")
        if x < 0 or (x_max is not None and x > x_max):
            upper = "" if x_max is None else f" and at most {x_max:g}"
            raise ValueError(f"{what}: {entry.strip()!r}: the {x_name} must be at least 0{upper}, got {x:g}")
        if y < 0:
            raise ValueError(f"{what}: {entry.strip()!r}: the value must be at least 0, got {y:g}")
        if points and x < points[-1][0]:
            raise ValueError(f"{what}: keyframes must be in order of {x_name}: {entry.strip()!r} comes after "
                             f"{points[-1][0]:g}")
        points.append((x, y))
    return Curve(tuple(points))


def frame_weights(curve: Curve, frames: int) -> torch.Tensor:
    """The curve at frames 0 .. frames-1: (frames,) float32."""
    return torch.tensor([curve(float(i)) for i in range(frames)], dtype=torch.float32)


def check_mask(mask: torch.Tensor, what: str = "mask") -> torch.Tensor:
    """A ComfyUI MASK, (h, w) or (t, h, w) with t = 1 (every frame) or t = the video's frames,
    as (t, h, w) float32."""
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or min(mask.shape) < 1:
        raise ValueError(f"{what}: expected a MASK of shape (h, w) or (frames, h, w), got {tuple(mask.shape)}")
    if not bool(torch.isfinite(mask).all()) or float(mask.min()) < 0:
        raise ValueError(f"{what}: values must be finite and at least 0 (a MASK is 0..1)")
    return mask.float()


def resize_mask(mask: torch.Tensor, grid: tuple[int, int], frames: int, what: str = "mask") -> torch.Tensor:
    """(t, h, w) mask -> (t, gh, gw) on a site's latent grid, t = 1 or `frames`.

    Area resampling: each latent cell gets the mean of the mask pixels it covers, so a cell the
    mask leaves out entirely is exactly 0 (no motion there), a cell on the border gets the covered
    fraction, and no thin part of the mask falls between samples, as it can with bilinear or
    nearest when shrinking 8x to 64x."""
    if mask.shape[0] not in (1, frames):
        raise ValueError(f"{what}: {mask.shape[0]} mask frames for a {frames}-frame video; give 1 mask (every "
                         f"frame) or {frames}")
    if tuple(mask.shape[1:]) == tuple(grid):
        return mask
    return F.interpolate(mask[None], size=tuple(grid), mode="area")[0]


def site_weights(grid: tuple[int, int], frames: int, mask: torch.Tensor | None = None,
                 frame_curve: Curve | None = None) -> torch.Tensor | None:
    """What multiplies one site's residual ((b h w), t, c), viewed (b, (h w), t, c): a tensor
    broadcasting as ((h w) or 1, t or 1, 1), or None when neither a mask nor frame weights are set."""
    weights = None
    if mask is not None:
        weights = resize_mask(mask, grid, frames).flatten(1).T[:, :, None]  # ((h w), t or 1, 1)
    if frame_curve is not None:
        per_frame = frame_weights(frame_curve, frames)[None, :, None]  # (1, t, 1)
        weights = per_frame if weights is None else weights * per_frame
    return weights


def weighted_residual(residual: torch.Tensor, scale: float, weights: torch.Tensor | None,
                      cells: int) -> torch.Tensor:
    """scale * residual, times `weights` (site_weights, already on the residual's device and dtype)
    over the (h w) cells and t frames of residual ((b h w), t, c)."""
    if weights is None:
        return scale * residual
    return (residual.unflatten(0, (-1, cells)) * (scale * weights)).flatten(0, 1)


def blend_features(parts: list[tuple[ActionFeatures, float]]) -> ActionFeatures:
    """sum_i w_i * features_i on both branches: a weighted mix of motions of the same shape
    (frames, references, width; batch 1 broadcasts). Weights are used as given: weights that sum to
    1 keep the features' scale. A weight of 0 drops its motion exactly ((1, 0) gives the first)."""
    if not parts:
        raise ValueError("blend: no action features")
    first = parts[0][0]
    for i, (features, weight) in enumerate(parts):
        if not math.isfinite(weight):
            raise ValueError(f"blend: weight {i + 1} is {weight}, expected a finite number")
        if features.frames_per_reference != first.frames_per_reference or \
                features.cond.shape[1:] != first.cond.shape[1:]:
            raise ValueError(
                f"blend: motion {i + 1} has {features.cond.shape[1]} tokens of width {features.cond.shape[2]} "
                f"({features.frames_per_reference} frames per reference), motion 1 has {first.cond.shape[1]} of width "
                f"{first.cond.shape[2]} ({first.frames_per_reference} per reference): encode the references with the "
                "same frame count and number of clips")
        if features.cond.shape[0] != first.cond.shape[0] and 1 not in (features.cond.shape[0], first.cond.shape[0]):
            raise ValueError(f"blend: motion {i + 1} holds {features.cond.shape[0]} samples, motion 1 holds "
                             f"{first.cond.shape[0]}: equal, or 1 for all")

    def mix(branch: str) -> torch.Tensor:
        total = None
        for features, weight in parts:
            term = getattr(features, branch) * weight
            total = term if total is None else total + term
        return total

    return ActionFeatures(mix("cond"), mix("uncond"), first.frames_per_reference)
