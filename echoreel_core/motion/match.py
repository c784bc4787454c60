"""Motion Match: how closely a generated video's motion follows a reference's, from dense optical flow.

Why flow and not a tracker: a user's videos have no known object to follow (the toy's tracker in
toy/metrics.py relies on one saturated object on grey); dense flow measures any motion, camera
pans and zooms included. OpenCV's Farneback flow does the pixel work; OpenCV is an optional
dependency (package `opencv-python-headless`), imported only when a match is computed, so the
rest of the pack never needs it.

Steps, for each video (frames (t, h, w, 3) in [0, 1]):
  1. Frames. Both videos are resized to one working size (the reference's aspect ratio, its long
     side `size`, 128 by default) and brought to the same count n = min(t_ref, t_gen) by taking n
     evenly spaced frames of the longer one.
  2. Grey. Each video is projected on its own principal colour axis (the first principal
     component of all its pixels' RGB) and stretched to 0..255 between its darkest and lightest
     value. Why not luminance: a chroma edge (a blue shape on a grey of the same brightness) has no
     luminance contrast and would give no flow; the principal axis is close to luminance for most
     natural videos and is the object-background axis for the toy's. One projection per video
     keeps the brightness constancy that flow relies on.
  3. Flow and weights. Farneback between consecutive frames: f_t(p), t = 0 .. n-2, in pixels
     (cut to `max_motion` of the long side). Each pixel's weight w_t(p) = max(0, D_t(p) - noise),
     D_t the 3x3 mean of |grey_{t+1} - grey_t| (0..1): only where the picture changes is there
     motion to see. Farneback's answer in flat or unchanged areas (a uniform background, the
     inside of a uniform shape) is a guess, and a static background must not dilute a small
     object's motion, so both get no weight.
  4. Global motion g_t = (b_x / W, b_y / H, s, rho): a w-weighted least-squares affine fit
     f(p) ~ b + A (p - pbar), pbar the weighted mean position (A with a small ridge, so that a
     point or a line of moving pixels gives A ~ 0). b is the moving part's mean velocity as a
     fraction of the frame (W x H), s = trace(A) / 2 its relative size change per frame (growth by
     k in one step gives s ~ ln k), rho = (A_yx - A_xy) / 2 its rotation in radians per frame.
     These are the units of the toy tracker's (dx, dy, ds), so on the toy both see the same numbers.
  5. Layout motion l_t: the w-weighted mean velocity (fractions of the frame) in each cell of a
     grid x grid partition (4 x 4 by default): where in the frame which motion happens.
  6. Score. With G = (g_0, ..., g_{n-2}) and L = (l_0, ..., l_{n-2}) flattened over time,

         score = (1 - lambda) * cos(G_ref, G_gen) + lambda * cos(L_ref, L_gen),
         cos(a, b) = a . b / (|a| |b|)   (0 when either is 0: no motion to compare),

     lambda = `layout_weight` (0.25 by default). An uncentred correlation over time: 1 for the
     same motion (at any speed: the scale cancels), about 0 for unrelated motions, negative for
     opposite ones. The global part is position-free, as the tracker's motion fidelity is (a move
     against the opposite move: -1); the layout part adds where the motion happens (there about
     -0.35, as the two objects are in different places at each step: -0.84 in all).

Validated against the toy tracker's motion fidelity in bench/motion_match.py (README: Motion Match).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

OPENCV_PACKAGE = "opencv-python-headless"
INSTALL_HINT = (f"python -m pip install {OPENCV_PACKAGE}  (with the Python that runs ComfyUI; where numpy must "
                f"stay below 2: \"{OPENCV_PACKAGE}<4.12\")")


class MissingOpenCV(ImportError):
    """Motion Match was asked for without OpenCV installed."""


def _cv2():
    """OpenCV, imported on first use only: the rest of the pack never needs it."""
    try:
        import cv2
    except ImportError as error:
        raise MissingOpenCV(f"Motion Match needs OpenCV's optical flow, from the package {OPENCV_PACKAGE}, which is "
                            f"not installed ({error}). Install it with: {INSTALL_HINT}") from error
    return cv2


@dataclass(frozen=True)
class MatchSettings:
    size: int = 128  # long side of the working frames, pixels
    grid: int = 4  # layout cells per side
    layout_weight: float = 0.25  # lambda in the score (module docstring)
    # Farneback: pyramid levels (each halves the size), averaging window (pixels), iterations per level
    levels: int = 3
    window: int = 25
    iterations: int = 3
    max_motion: float = 0.25  # flows longer than this fraction of the long side are cut to it
    noise: float = 0.02  # grey changes below this (of the 0..1 range) are not motion

    def validate(self) -> None:
        if self.size < 16 or self.grid < 1 or not 0 <= self.layout_weight <= 1:
            raise ValueError(f"need size >= 16, grid >= 1 and layout_weight in [0, 1], got {self.size}, "
                             f"{self.grid}, {self.layout_weight}")
        if self.levels < 1 or self.window < 3 or self.iterations < 1:
            raise ValueError(f"need levels >= 1, window >= 3, iterations >= 1, got {self.levels}, "
                             f"{self.window}, {self.iterations}")


@dataclass(frozen=True)
class MotionMatch:
    """A match's score, its two parts, and what they were computed from (for the picture)."""

    score: float
    global_score: float
    layout_score: float
    reference_frames: torch.Tensor  # (n, h, w, 3) at the working size
    generated_frames: torch.Tensor
    reference_flow: torch.Tensor  # (n - 1, h, w, 2) pixels of the working size
    generated_flow: torch.Tensor
    reference_weight: torch.Tensor  # (n - 1, h, w): where the picture changed (module docstring, step 3)
    generated_weight: torch.Tensor
    reference_global: torch.Tensor  # (n - 1, 4): (b_x / W, b_y / H, s, rho) per step
    generated_global: torch.Tensor
    source_frames: tuple[int, int]  # the frame counts given (reference, generated)

    @property
    def frames(self) -> int:
        return self.reference_frames.shape[0]

    def summary(self) -> str:
        h, w = self.reference_frames.shape[1:3]
        used = f"{self.frames} frames at {w}x{h}"
        if len(set(self.source_frames)) > 1:
            used += f" (of {self.source_frames[0]} reference and {self.source_frames[1]} generated, evenly spaced)"
        speed = [float(g[:, :2].norm(dim=1).mean()) for g in (self.reference_global, self.generated_global)]
        return (f"Motion Match {self.score:.3f} (global motion {self.global_score:.3f}, layout "
                f"{self.layout_score:.3f}); {used}; mean speed per frame: reference {speed[0]:.1%}, generated "
                f"{speed[1]:.1%} of the frame")


def _as_frames(frames: torch.Tensor, name: str) -> torch.Tensor:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{name}: expected frames (t, h, w, 3), got shape {tuple(frames.shape)}")
    if frames.shape[0] < 2:
        raise ValueError(f"{name}: a motion needs at least 2 frames, got {frames.shape[0]}")
    x = frames.detach().cpu()
    return (x.float() / 255 if x.dtype == torch.uint8 else x.float()).clamp(0, 1)


def working_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the long side `size` and the aspect ratio of (height, width)."""
    scale = size / max(height, width)
    return max(8, round(height * scale)), max(8, round(width * scale))


def _resample(frames: torch.Tensor, n: int, hw: tuple[int, int]) -> torch.Tensor:
    """n evenly spaced frames, resized to hw (area filter when shrinking, bilinear when growing)."""
    index = torch.linspace(0, frames.shape[0] - 1, n).round().long()
    x = frames[index].permute(0, 3, 1, 2)
    shrink = hw[0] < x.shape[2] and hw[1] < x.shape[3]
    x = F.interpolate(x, size=hw, mode="area") if shrink else F.interpolate(x, size=hw, mode="bilinear",
                                                                             align_corners=False)
    return x.permute(0, 2, 3, 1).clamp(0, 1).contiguous()


def principal_grey(frames: torch.Tensor) -> np.ndarray:
    """(t, h, w) uint8: every pixel's RGB projected on the video's first principal colour axis,
    stretched between its extremes (module docstring, step 2)."""
    rgb = frames.reshape(-1, 3).double()
    centred = rgb - rgb.mean(0)
    cov = centred.T @ centred / max(1, centred.shape[0] - 1)
    _, vectors = torch.linalg.eigh(cov)
    axis = vectors[:, -1]
    if float(cov.trace()) < 1e-10:  # a flat video: any axis gives a constant grey
        axis = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    axis = axis if float(axis.sum()) >= 0 else -axis  # brighter is lighter, for a familiar picture
    grey = (frames.double() @ axis).float()
    lo, hi = float(grey.min()), float(grey.max())
    scaled = (grey - lo) / max(hi - lo, 1e-6) * 255
    return scaled.clamp(0, 255).round().to(torch.uint8).numpy()


def dense_flow(frames: torch.Tensor, settings: MatchSettings = MatchSettings()) -> tuple[torch.Tensor, torch.Tensor]:
    """Farneback flow between consecutive frames of (t, h, w, 3) frames: ((t - 1, h, w, 2) flow
    (dx, dy) in pixels, (t - 1, h, w) weights: where the picture changed (module docstring, step 3)."""
    cv2 = _cv2()
    grey = principal_grey(frames)
    flows = [cv2.calcOpticalFlowFarneback(grey[i], grey[i + 1], None, 0.5, settings.levels, settings.window,
                                          settings.iterations, 5, 1.1, 0) for i in range(len(grey) - 1)]
    flow = torch.from_numpy(np.stack(flows)).float()
    h, w = grey.shape[1:]
    cap = settings.max_motion * max(h, w)
    speed = flow.norm(dim=-1, keepdim=True)
    flow = flow * (cap / speed.clamp_min(cap))  # Farneback's guesses in flat areas can be any size
    g = torch.from_numpy(grey).float() / 255
    change = (g[1:] - g[:-1]).abs().unsqueeze(1)  # (t - 1, 1, h, w)
    change = F.avg_pool2d(change, 3, stride=1, padding=1, count_include_pad=False)[:, 0]
    return flow, (change - settings.noise).clamp_min(0)


def global_motion(flow: torch.Tensor, weight: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """(t, 4) per step: (b_x / W, b_y / H, s, rho) of the weighted affine fit (module docstring,
    step 4). `ridge` (times the long side squared: a spread of 3% of it) keeps A finite when what
    moves is a point or a line, which cannot show a size change or a turn. It must stay small: as
    large as the moving part's spread, it halves s."""
    t, h, w, _ = flow.shape
    f = flow.double().reshape(t, -1, 2)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                            indexing="ij")
    p = torch.stack([xs, ys], -1).reshape(1, -1, 2)
    weight = weight.double().reshape(t, -1)
    total = weight.sum(1, keepdim=True).clamp_min(1e-12)
    wn = (weight / total).unsqueeze(-1)
    pbar = (wn * p).sum(1, keepdim=True)
    b = (wn * f).sum(1)  # (t, 2): mean velocity, pixels
    d = p - pbar
    cov = (wn * d).transpose(1, 2) @ d  # (t, 2, 2): sum w d d^T
    cross = (wn * (f - b.unsqueeze(1))).transpose(1, 2) @ d  # sum w (f - b) d^T
    eye = torch.eye(2, dtype=torch.float64) * ridge * max(h, w) ** 2
    a = cross @ torch.linalg.inv(cov + eye)
    s = (a[:, 0, 0] + a[:, 1, 1]) / 2
    rho = (a[:, 1, 0] - a[:, 0, 1]) / 2
    return torch.stack([b[:, 0] / w, b[:, 1] / h, s, rho], 1).float()


def layout_motion(flow: torch.Tensor, weight: torch.Tensor, grid: int) -> torch.Tensor:
    """(t, grid * grid * 2): the weighted mean velocity in each cell, as fractions of the frame."""
    t, h, w, _ = flow.shape
    f = flow.double().permute(0, 3, 1, 2)  # (t, 2, h, w)
    weight = weight.double().unsqueeze(1)
    cells = (min(grid, h), min(grid, w))
    mass = F.adaptive_avg_pool2d(weight, cells)
    mean = F.adaptive_avg_pool2d(weight * f, cells) / mass.clamp_min(1e-12)
    mean = mean / torch.tensor([w, h], dtype=torch.float64).view(1, 2, 1, 1)
    return mean.reshape(t, -1).float()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """a . b / (|a| |b|) of the flattened tensors; 0 when either is all zeros."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    na, nb = float(a.norm()), float(b.norm())
    return 0.0 if na < 1e-12 or nb < 1e-12 else float(a @ b) / (na * nb)


def motion_match(reference: torch.Tensor, generated: torch.Tensor,
                 settings: MatchSettings = MatchSettings()) -> MotionMatch:
    """Compare the motion of two videos, each (t, h, w, 3) frames in [0, 1] (or uint8)."""
    settings.validate()
    ref, gen = _as_frames(reference, "reference"), _as_frames(generated, "generated")
    n = min(ref.shape[0], gen.shape[0])
    hw = working_size(ref.shape[1], ref.shape[2], settings.size)
    ref_frames, gen_frames = _resample(ref, n, hw), _resample(gen, n, hw)
    (ref_flow, ref_weight), (gen_flow, gen_weight) = dense_flow(ref_frames, settings), dense_flow(gen_frames, settings)
    ref_global, gen_global = global_motion(ref_flow, ref_weight), global_motion(gen_flow, gen_weight)
    global_score = cosine(ref_global, gen_global)
    layout_score = cosine(layout_motion(ref_flow, ref_weight, settings.grid),
                          layout_motion(gen_flow, gen_weight, settings.grid))
    score = (1 - settings.layout_weight) * global_score + settings.layout_weight * layout_score
    return MotionMatch(score, global_score, layout_score, ref_frames, gen_frames, ref_flow, gen_flow, ref_weight,
                       gen_weight, ref_global, gen_global, (reference.shape[0], generated.shape[0]))


def _ranks(values) -> torch.Tensor:
    """1-based ranks, ties given their mean rank."""
    x = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    for v in torch.unique(x):
        tied = x == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def rank_correlation(a, b) -> float:
    """Spearman's rank correlation of two equally long sequences (the Pearson correlation of their
    ranks, ties averaged): how the score is validated against another measure of motion."""
    ra, rb = _ranks(a), _ranks(b)
    if len(ra) != len(rb) or len(ra) < 2:
        raise ValueError(f"need two equally long sequences of at least 2 values, got {len(ra)} and {len(rb)}")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float(ra @ rb) / denominator if denominator > 0 else 0.0


# ---- the picture -------------------------------------------------------------------------------

def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(..., 3) RGB from hue in [0, 1), saturation and value in [0, 1]."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], -1)
    return v.unsqueeze(-1) - (v * s).unsqueeze(-1) * (torch.minimum(k, 4 - k).clamp(0, 1))


def flow_to_rgb(flow: torch.Tensor, scale: float) -> torch.Tensor:
    """(..., h, w, 3) colour-wheel picture of (..., h, w, 2) flow: the hue is the direction
    (right red, down yellow-green, left cyan, up violet: image coordinates), the saturation the
    speed relative to `scale` (white: still; full colour: `scale` pixels per frame or more)."""
    dx, dy = flow[..., 0].float(), flow[..., 1].float()
    hue = (torch.atan2(dy, dx) / (2 * math.pi)) % 1.0
    sat = ((dx * dx + dy * dy).sqrt() / max(scale, 1e-6)).clamp(0, 1)
    return _hsv_to_rgb(hue, sat, torch.ones_like(sat))


def colour_wheel(size: int) -> torch.Tensor:
    """(size, size, 3): the key of flow_to_rgb; the flow from the centre to each pixel, the rim at
    full speed, outside it white."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5 - size / 2) / (size / 2)
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    inside = (xs * xs + ys * ys) <= 1
    rgb = flow_to_rgb(torch.stack([xs, ys], -1), 1.0)
    return torch.where(inside.unsqueeze(-1), rgb, torch.ones_like(rgb))


def seen_flow(flow: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The flow where it means something: near (within 3% of the long side) pixels with weight, 0
    elsewhere, where Farneback's answer is a guess (flat or unchanged areas)."""
    radius = max(1, round(0.03 * max(flow.shape[1:3])))
    near = F.max_pool2d((weight > 0).float().unsqueeze(1), 2 * radius + 1, stride=1, padding=radius)[:, 0]
    return flow * near.unsqueeze(-1)


def picture(match: MotionMatch, steps: int = 4, gap: int = 2) -> torch.Tensor:
    """(H, W, 3) still on a dark grey canvas: one row per chosen step t (evenly spaced): reference
    frame t, its flow t -> t+1, generated frame t, its flow (seen_flow: white where nothing
    changed); a colour wheel (the key) closes the first row. Both flows share one speed scale (the
    99th percentile of what moves in both), so their strengths compare."""
    flows = [seen_flow(match.reference_flow, match.reference_weight),
             seen_flow(match.generated_flow, match.generated_weight)]
    n = flows[0].shape[0]
    chosen = torch.linspace(0, n - 1, min(max(1, steps), n)).round().long().unique().tolist()
    speeds = torch.cat([f.norm(dim=-1).reshape(-1) for f in flows])
    speeds = speeds[speeds > 0]
    scale = float(torch.quantile(speeds[:: max(1, speeds.numel() // 1_000_000)], 0.99)) if speeds.numel() else 1.0
    h, w = match.reference_frames.shape[1:3]
    out = torch.full((len(chosen) * (h + gap) - gap, 5 * (w + gap) - gap, 3), 0.25)  # flow tiles are white
    for r, t in enumerate(chosen):
        row = [match.reference_frames[t], flow_to_rgb(flows[0][t], scale),
               match.generated_frames[t], flow_to_rgb(flows[1][t], scale)]
        for c, tile in enumerate(row):
            out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = tile
    side = min(h, w)
    out[:side, 4 * (w + gap): 4 * (w + gap) + side] = colour_wheel(side)
    return out
