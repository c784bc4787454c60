"""The toy world's measures (docs/toy-world.md): object tracking, motion fidelity, content
leakage, detection rate, and side-by-side grids for looking at results.

Tracking (`track`)
    The known background is achromatic (grey plus a luminance texture), so the object is found by
    its chroma. Per frame: subtract the per-channel median pixel (the background's colour, as the
    object covers far less than half the frame; this also cancels a uniform tint a decoder may
    add), then take chroma C = max - min of the three
    channels and the HSV hue of the difference. Why this space: a pixel that blends the object
    colour c with a grey g by coverage a (anti-aliasing, blur, VAE smoothing, h264's half-resolution
    chroma) is a*c + (1-a)*g; subtracting the grey and taking max - min gives exactly a * C(c), and
    the hue is that of c whatever a is. So C / C(object) is a linear coverage estimate, the hue is
    a colour label that blur does not move, and luminance texture or brightness changes give C = 0.
    (HSV saturation C/V is not linear in coverage; Lab's a*b* are not exactly hue-preserving
    under mixing.) Steps:
      1. seed pixels: C >= min_chroma (0.25; the palette's chroma is ~0.8, a clean background's 0);
      2. colour: the chroma-weighted circular mean hue of the seeds, named by the nearest palette
         hue among `colours` (palette hues are >= 48 degrees apart);
      3. object pixels: seeds whose hue is within 45 degrees of that colour (none: no object),
         grown by 2 pixels to take in the soft edge (pixels of that hue, or too faint, C <
         min_chroma, for their hue to mean anything), weighted by coverage w = clamp(C / C_obj, 0, 1), with C_obj the
         90th percentile of C over the object's seeds (robust to a decoder's desaturation);
      4. area = sum(w) (pixels; blur-invariant since blur preserves mass), centroid = w-weighted
         mean of the pixel centres ((j + 0.5, i + 0.5): the generator's coordinates); none is
         found (None) when there is no seed or area < min_area (8 pixels);
      5. shape, from blur-invariant moments of the coverage w: a Gaussian blur adds a Gaussian's
         cumulants, whose 3rd and 4th are 0, so the 3rd and 4th cumulants of w's projections do
         not change. skew = k3 of y / area^1.5 (a triangle, apex up, gives -0.021; symmetric
         shapes 0); squareness = log2(mean k4 along x and y / mean k4 along the diagonals)
         (square +1, circle 0, diamond -1). skew < -0.0105 names a triangle; otherwise the
         nearest squareness among circle, square and diamond (only the candidate `shapes`).
         Calibrated on clean, mp4, Gaussian-blurred (sigma 1, 1.5) and 2x down-up-sampled clips.

Motion fidelity (`motion_vector`, `motion_cosine`, `motion_fidelity`)
    For a track of T frames of an H x W video, the vector is the concatenation, in this order, of
        dx_t = (x_{t+1} - x_t) / W,                         t = 0 .. T-2
        dy_t = (y_{t+1} - y_t) / H,                         t = 0 .. T-2
        ds_t = size_weight * 0.5 * (ln a_{t+1} - ln a_t),   t = 0 .. T-2
    (3 (T-1) numbers; ds is the change of log linear size, shape-independent: a growing circle
    and a growing square give the same ds; size_weight = 1). Typical steps are comparable:
    ~0.03-0.15 for moves and orbits, ~0.05 for growing. Missing detections: every entry of a step
    t -> t+1 with a missing end is 0 (no invented motion, no interpolation). For the generated
    video this is a penalty: if the rest matches perfectly, the cosine is |r_observed| / |r|, the
    square root of the share of the reference's motion energy that was observed. The cosine with
    a zero vector (nothing detected, or no motion at all) is 0. `motion_fidelity` is the mean
    cosine over the set: 1 for identical motion, about 0 for unrelated, -1 for reversed.

Path fidelity (`path_cosine`): the same cosine with size_weight 0, where the object goes. It is
    defined only for a reference whose object travels (`travels`: at least MIN_PATH, 1 pixel, of
    frame-to-frame moves in all): a reference that stays in place (shrinking) has a path vector of
    the tracker's sub-pixel jitter (about 0.1 pixel a frame on anti-aliased edges), and a cosine
    with jitter is about 0 for every generated video, the ideal one that stays still included.

Content leakage (`video_object`, `leaked`)
    A generated video's object is the majority vote of its detected frames' colours and shapes.
    It leaks when its colour equals the reference's (where the reference's colour differs from the
    prompt's) or likewise its shape. The rate is over the videos with at least one detection: an
    empty video cannot be judged, and is already a failure for detection rate and fidelity.

Detection rate (`detection_rate`): the fraction of frames, over all given tracks, with a detection.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..video_io import stack_side_by_side
from .world import COLOURS, SHAPES

# squareness of the symmetric shapes; a triangle (apex up) is told by its skew instead
SQUARENESS = {"circle": 0.0, "square": 1.0, "diamond": -1.0}
TRIANGLE_SKEW = -0.021  # k3 of y / area^1.5 of a uniform triangle, apex up, height = base


@dataclass(frozen=True)
class Detection:
    x: float  # centroid, pixels (pixel (i, j) covers [j, j+1] x [i, i+1])
    y: float
    area: float  # pixels, coverage-weighted
    colour: str
    shape: str
    skew: float  # the shape features (see the module docstring)
    squareness: float


@dataclass(frozen=True)
class Track:
    """Per-frame detections (None: nothing found) of a video of height x width pixels."""

    detections: tuple[Detection | None, ...]
    height: int
    width: int

    def __len__(self) -> int:
        return len(self.detections)

    def __iter__(self):
        return iter(self.detections)

    def __getitem__(self, i):
        return self.detections[i]


def _hue(d: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """HSV hue in degrees of (..., 3) colours whose max - min is `chroma` (0 where chroma is 0)."""
    r, g, b = d.unbind(-1)
    mx = d.amax(-1)
    c = chroma.clamp_min(1e-8)
    h = torch.where(mx == r, ((g - b) / c) % 6, torch.where(mx == g, (b - r) / c + 2, (r - g) / c + 4))
    return h * 60


def _angle(a: torch.Tensor | float, b: float) -> torch.Tensor | float:
    """Absolute difference of hues in degrees, in [0, 180]."""
    diff = (a - b) % 360
    return torch.minimum(diff, 360 - diff) if isinstance(diff, torch.Tensor) else min(diff, 360 - diff)


def _palette(colours) -> dict[str, float]:
    if isinstance(colours, Mapping):
        rgb = {k: torch.tensor(v, dtype=torch.float64) for k, v in colours.items()}
    else:
        rgb = {k: torch.tensor(COLOURS[k], dtype=torch.float64) for k in colours}
    out = {}
    for name, c in rgb.items():
        chroma = c.max() - c.min()
        if chroma < 0.2:
            raise ValueError(f"colour {name} {tuple(c.tolist())} is too grey to segment (chroma {float(chroma):.2f})")
        out[name] = float(_hue(c, chroma))
    return out


def _as_float(frames: torch.Tensor) -> torch.Tensor:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (t, h, w, 3), got {tuple(frames.shape)}")
    x = frames.detach().cpu()
    return (x.float() / 255 if x.dtype == torch.uint8 else x.float()).double()


def track(frames: torch.Tensor, colours: Sequence[str] | Mapping[str, Sequence[float]] = tuple(COLOURS),
          shapes: Sequence[str] = SHAPES, *, min_chroma: float = 0.25, min_area: float = 8.0) -> Track:
    """Find the object in every frame of (t, h, w, 3) frames ([0, 1] floats or uint8).

    colours: the candidate colour names (or name -> RGB); shapes: the candidate shapes."""
    x = _as_float(frames)
    hues = _palette(colours)
    shapes = tuple(shapes)
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes:
        raise ValueError(f"unknown shapes {unknown}; known: {list(SHAPES)}")
    t, h, w, _ = x.shape
    d = x - x.reshape(t, h * w, 3).median(dim=1).values.view(t, 1, 1, 3)
    chroma = d.amax(-1) - d.amin(-1)  # (t, h, w)
    hue = _hue(d, chroma)
    seeds = chroma >= min_chroma
    cols = torch.arange(w, dtype=torch.float64) + 0.5  # pixel centres
    rows = torch.arange(h, dtype=torch.float64) + 0.5
    out = []
    for i in range(t):
        if not bool(seeds[i].any()):
            out.append(None)
            continue
        c_i, h_i, s_i = chroma[i], hue[i], seeds[i]
        weight = c_i[s_i]
        angle = torch.deg2rad(h_i[s_i])
        mean_hue = math.degrees(math.atan2(float((weight * angle.sin()).sum()), float((weight * angle.cos()).sum())))
        colour = min(hues, key=lambda k: _angle(mean_hue, hues[k]))
        match = _angle(h_i, hues[colour]) <= 45
        core = s_i & match
        if not bool(core.any()):
            out.append(None)
            continue
        c_obj = float(torch.quantile(c_i[core], 0.9))
        near = F.max_pool2d(core.double()[None, None], 5, stride=1, padding=2)[0, 0] > 0  # + 2 pixels
        # the soft edge: near the object, either of its hue or too faint for the hue to mean anything
        member = near & (match | (c_i < min_chroma))
        cover = torch.where(member, (c_i / c_obj).clamp(0, 1), torch.zeros_like(c_i))
        area = float(cover.sum())
        if area < min_area:
            out.append(None)
            continue
        cx = float((cover.sum(0) * cols).sum()) / area
        cy = float((cover.sum(1) * rows).sum()) / area
        skew, squareness = _shape_features(cover, cols - cx, rows - cy, area)
        out.append(Detection(cx, cy, area, colour, _shape(skew, squareness, shapes), skew, squareness))
    return Track(tuple(out), h, w)


def _shape_features(cover: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, area: float):
    """(skew, squareness) of a coverage map; dx (w,), dy (h,) are offsets from the centroid."""
    X, Y = dx.view(1, -1), dy.view(-1, 1)

    def moment(u, k):
        return float((cover * u**k).sum()) / area

    def k4(u):
        return moment(u, 4) - 3 * moment(u, 2) ** 2

    r = math.sqrt(0.5)
    axes = (k4(X + 0 * Y) + k4(Y + 0 * X)) / 2
    diagonals = (k4((X + Y) * r) + k4((X - Y) * r)) / 2
    squareness = math.log2(axes / diagonals) if axes < 0 and diagonals < 0 else 0.0
    return moment(Y + 0 * X, 3) / area**1.5, squareness


def _shape(skew: float, squareness: float, shapes: tuple[str, ...]) -> str:
    if "triangle" in shapes and skew < TRIANGLE_SKEW / 2:
        return "triangle"
    symmetric = [s for s in shapes if s != "triangle"] or list(shapes)
    return min(symmetric, key=lambda s: abs(squareness - SQUARENESS.get(s, 0.0)))


def detection_rate(tracks: Track | Iterable[Track]) -> float:
    """The fraction of frames, over all tracks, in which an object was found."""
    tracks = [tracks] if isinstance(tracks, Track) else list(tracks)
    total = sum(len(tr) for tr in tracks)
    if total == 0:
        raise ValueError("detection_rate needs at least one frame")
    return sum(d is not None for tr in tracks for d in tr) / total


def motion_vector(tr: Track, size_weight: float = 1.0) -> torch.Tensor:
    """(3 (T-1),) float64: [dx_0..dx_{T-2}, dy_0.., ds_0..] as the module docstring defines."""
    n = len(tr) - 1
    if n < 1:
        raise ValueError("a motion needs at least 2 frames")
    v = torch.zeros(3, n, dtype=torch.float64)
    for t in range(n):
        a, b = tr[t], tr[t + 1]
        if a is None or b is None:
            continue
        v[0, t] = (b.x - a.x) / tr.width
        v[1, t] = (b.y - a.y) / tr.height
        v[2, t] = size_weight * 0.5 * math.log(b.area / a.area)
    return v.reshape(-1)


def motion_cosine(generated: Track, reference: Track, size_weight: float = 1.0) -> float:
    """Cosine of the two motion vectors; 0 when either is all zeros."""
    if len(generated) != len(reference):
        raise ValueError(f"tracks of {len(generated)} and {len(reference)} frames cannot be compared")
    g, r = motion_vector(generated, size_weight), motion_vector(reference, size_weight)
    ng, nr = float(g.norm()), float(r.norm())
    return 0.0 if ng == 0 or nr == 0 else float(g @ r) / (ng * nr)


def motion_fidelity(generated: Sequence[Track], references: Sequence[Track], size_weight: float = 1.0) -> float:
    """Mean motion cosine over pairs (generated[i], references[i])."""
    if len(generated) != len(references) or not generated:
        raise ValueError(f"need equally many generated and reference tracks, at least one; "
                         f"got {len(generated)} and {len(references)}")
    return sum(motion_cosine(g, r, size_weight) for g, r in zip(generated, references)) / len(generated)


MIN_PATH = 1.0  # pixels of frame-to-frame moves over the whole reference: less is tracker jitter


def travels(tr: Track) -> bool:
    """Whether the track's object moves at least MIN_PATH pixels in all (frame to frame, found frames)."""
    steps = [math.hypot(b.x - a.x, b.y - a.y) for a, b in zip(tr, tr[1:]) if a is not None and b is not None]
    return sum(steps) >= MIN_PATH


def path_cosine(generated: Track, reference: Track) -> float | None:
    """The motion cosine over positions only (size_weight 0); None when the reference does not travel."""
    return motion_cosine(generated, reference, 0.0) if travels(reference) else None


def _object(o) -> tuple[str, str]:
    """(colour, shape) from a tuple, a dict with colour/shape keys, or an object with those fields."""
    if isinstance(o, Mapping):
        return o["colour"], o["shape"]
    if isinstance(o, (tuple, list)):
        return o[0], o[1]
    return o.colour, o.shape


def video_object(tr: Track) -> tuple[str, str] | None:
    """(colour, shape) by majority over the detected frames (ties: the earliest); None if none."""
    found = [d for d in tr if d is not None]
    if not found:
        return None
    return Counter(d.colour for d in found).most_common(1)[0][0], Counter(d.shape for d in found).most_common(1)[0][0]


def leaked(seen: tuple[str, str], prompt_object, reference_object) -> tuple[bool, bool]:
    """(colour, shape): whether the generated object's attribute is the reference's instead of the
    prompt's; an attribute the two share is never leakage."""
    (pc, ps), (rc, rs) = _object(prompt_object), _object(reference_object)
    return rc != pc and seen[0] == rc, rs != ps and seen[1] == rs


# ---- looking at results ------------------------------------------------------------------------

def _float(v: torch.Tensor) -> torch.Tensor:
    return v.float() / 255 if v.dtype == torch.uint8 else v.float()


def grid(reference: torch.Tensor, without: torch.Tensor, with_: torch.Tensor, gap: int = 2,
         gap_value: float = 1.0) -> torch.Tensor:
    """(t, h, 3w + 2 gap, 3) float video: reference | without EchoReel | with EchoReel, separated
    by `gap` columns of `gap_value`; write it with video_io.write_video (.gif or .mp4)."""
    videos = [_float(v) for v in (reference, without, with_)]
    t, h = videos[0].shape[:2]
    sep = torch.full((t, h, gap, 3), gap_value)
    parts = [videos[0], sep, videos[1], sep, videos[2]] if gap > 0 else videos
    return stack_side_by_side(*parts)


def grid_image(*videos: torch.Tensor, frames: Sequence[int] | None = None, gap: int = 2,
               gap_value: float = 1.0) -> torch.Tensor:
    """(rows * h + gaps, cols * w + gaps, 3) still: one row per video (e.g. reference, without,
    with), one column per frame index in `frames` (default all), for a PNG."""
    if not videos:
        raise ValueError("grid_image needs at least one video")
    videos = [_float(v) for v in videos]
    if len({tuple(v.shape) for v in videos}) != 1:
        raise ValueError(f"videos must share one shape, got {[tuple(v.shape) for v in videos]}")
    t, h, w, _ = videos[0].shape
    frames = list(range(t)) if frames is None else list(frames)
    out = torch.full((len(videos) * (h + gap) - gap, len(frames) * (w + gap) - gap, 3), gap_value)
    for r, v in enumerate(videos):
        for c, f in enumerate(frames):
            out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = v[f]
    return out
