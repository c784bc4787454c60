"""The toy world: seeded synthetic videos of one coloured shape doing one action, with captions.

Everything here is deterministic: a `ClipSpec` (action, colour, shape and three integer seeds)
fully determines a clip's pixels, and `write_dataset(out_dir, split, n, seed)` gives the same
JSON bytes (which record every ClipSpec) and renders the same frames for the same arguments on
every run. (The mp4 bytes can still differ between runs by a few levels of lossy coding:
`video_io.write_video` runs libx264 with its default threads, which is not bit-reproducible.)

World
    One object (shapes: circle, square, triangle; diamond as an extra) of one saturated colour
    (red, green, blue, yellow; cyan and magenta as extras) on an achromatic grey background with a
    low-contrast, smooth luminance texture, static over the clip. The palette's hues are about 60
    degrees apart (48 at least) and its chroma (max - min of RGB) is about 0.8 while the background's is 0: blending an
    object colour with a grey (anti-aliasing, blur, VAE smoothing, h264's half-resolution chroma)
    keeps its hue and scales its chroma by the coverage, which is what `metrics.track` relies on.
    Shapes are rendered in torch with analytic anti-aliasing (coverage = clamp(0.5 - signed
    distance in pixels, 0, 1)); the object's (x, y) is its centroid (for the triangle too), and its
    size `r` is the half-extent of its bounding box (circle radius, half the square's side).

Frames and files
    A clip has `World.frames` designed frames (16, the real models' temporal length) at times
    tau = i / (frames - 1), tau in [0, 1]. Files hold (frames - 1) * stride + 1 frames rendered at
    the intermediate times (61 with the default stride 4), at fps * stride, so reading a file the
    official way (16 frames, stride 4, from frame 0: the trainer's and the Load Reference Video
    node's defaults) returns exactly the 16 designed frames, and the file plays smoothly. With
    `stride=1` the files hold just the 16 frames (then read them with stride 1).

Actions (`ACTIONS`, id -> caption phrase)
    the 8 straight moves ("moving left", "moving up-right", ...), "moving back and forth"
    (horizontal, one period, rightwards first), "bouncing up and down" (vertical, one period,
    upwards first), "orbiting clockwise" / "orbiting anticlockwise" (as seen on screen, 0.75 to 1
    turn), "zigzagging" (rightwards along 4 alternating up-right / down-right strokes), "growing",
    "shrinking" (geometric: constant rate of log-size) and "pulsing" (grows, then shrinks back);
    and four motions that no trained action shows as a whole, held out from the start:
    "accelerating in a straight line" (`accelerate`: from rest, the distance covered grows as
    tau^1.7 to tau^2.3, at any angle), "curving in an arc" (`arc`: 0.35 to 0.55 of a turn, either
    way round, from any start angle: never a whole orbit), "turning a corner" (`corner`: an L at
    constant speed, along one axis, then at tau 0.42 to 0.58 along a perpendicular one, any of
    the 8 such L's) and "drifting diagonally while expanding" (`drift_grow`: one of the 4
    diagonal moves while the size grows geometrically from 0.7-0.8x to 1.3-1.45x).
    Per clip, the seeds vary the speed or amplitude (55-90 % of the room the frame leaves), the
    start position, the object size, the growth factors, the orbit's and the arc's start angle and
    turn, the zigzag's steepness, and the new motions' direction, ease-in power and bend, always
    keeping the whole object inside the frame with a 1-pixel margin. Each action draws only from
    its own clip's seeds, so adding an action changes no clip of the others.

The split (`Split`, `DEFAULT_SPLIT`)
    base (the base text-to-video model learns these): moving left/right/up/down.
    prism (the Action Prism and the integration layers learn from pairs of these): the four base
    moves, the four diagonal moves, back and forth, up and down, orbiting anticlockwise, growing,
    pulsing.
    held_out (evaluation only; neither model sees them): orbiting clockwise, zigzagging, shrinking
    (`HELD_OUT_GROUPS["original"]`), and accelerating, the arc, the corner and drifting while
    expanding (`HELD_OUT_GROUPS["new_motions"]`), which the evaluation reports as two groups.
    Why: the base set is closed under reversal (each move and its opposite), so a base model that
    is given no action (see the captions) picks a seen move at random, and its motion's cosine
    with any held-out reference averages to about 0: the "without EchoReel" baseline the spec
    asks for. The base knows no curve and no size change: those must come from EchoReel. The
    Prism set spans the primitives a general motion copier needs (translation in all 8
    directions, reversals, a curve, growth and shrinkage inside pulsing), so each held-out action
    is new as a whole but composed of learnt primitives: orbiting clockwise is the mirror of a
    trained orbit, zigzagging chains trained diagonal strokes, shrinking is growing reversed. The
    new motions step further from what was trained: a speed that changes within the clip (every
    trained move keeps its speed, or follows a sine), a part of a circle either way round, a bend
    between two straight moves, and a move and a size change at once (trained only apart).

Captions (`caption`, the `name_actions` policy)
    "a red circle moving left": the object, then the action's phrase when the policy names it.
    "known" (default, the spec's rule): the action is named only when the base model was trained
    on it; otherwise the caption is just the object ("a red circle"). Reference captions follow
    the same rule. Reasons: a phrase the base never saw maps to text embeddings it was never
    trained on (out-of-distribution conditioning that degrades the object, which would confound
    leakage and detection with EchoReel's job), and Prism pairs whose captions named the
    Prism-training actions would let the Prism read the motion from the words instead of the
    video, a shortcut that cannot carry over to held-out actions whose words it never saw.
    "all" names every action (what a user would type: use it to test robustness to unknown
    words at evaluation) and "none" names none.
    The base dataset also drops the action from a fraction (`drop_action`, 25 %) of its captions,
    so that object-only prompts are in the base model's distribution.

Pairs (`pair_motion`)
    A pair is (target, reference) of the same action, whose objects differ in colour AND shape,
    on different backgrounds. "copy" (default): the target moves along exactly the reference's
    trajectory (same positions and sizes per frame), the easiest signal for a small model and the
    motion the fidelity measure compares against. "rescale": the same motion pattern (orbit
    start angle and turn, zigzag steepness, ...: the pattern seed's, see `ClipSpec`) with its own
    speed, amplitude, start position and size: the displacement sequences then differ only by a
    scale, which the cosine ignores (and by the growth factors, for the actions that change size).

Datasets (`write_dataset`; `python -m echoreel_core.toy.world OUT_DIR`)
    prism / eval: the official training JSON (a list of {input_text, gt_video_path, inject_text,
    inject_video_path}, paths relative to the JSON, readable by `echoreel_core.training.data`) plus extra
    keys the trainer ignores: "action", and "target_clip" / "reference_clip" (the ClipSpec fields,
    which re-render the clip exactly and give the expected colour and shape for evaluation).
    base: a list of {"caption", "video_path", "action", "clip"}, for text-to-video training.
    Each split folder gets `<split>.json`, `videos/*.mp4` and `world.json` (the World and Split).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..common.cli_args import at_least
from ..common.threads import add_threads_argument, configure_threads

# ---- the world's vocabulary ----------------------------------------------------------------------

# name -> RGB in [0, 1]; chroma (max - min) ~0.8, hues ~0, 56, 125, 184, 232, 300 degrees
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "yellow": (0.90, 0.85, 0.10),
    "green": (0.10, 0.75, 0.15),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.15, 0.25, 0.95),
    "magenta": (0.85, 0.10, 0.85),
}
SHAPES = ("circle", "square", "triangle", "diamond")
MIN_SIDE = 32  # pixels: the smallest frame side whose objects and margins still fit
MIN_FRAMES = 2  # designed frames: a motion needs two


@dataclass(frozen=True)
class Action:
    id: str
    phrase: str  # what captions say
    kind: str  # "move", "oscillate", "orbit", "zigzag", "size", "accelerate", "arc", "corner", "move_size"


def _actions() -> dict[str, Action]:
    out = {}
    for name in ("left", "right", "up", "down", "up-left", "up-right", "down-left", "down-right"):
        out[f"move_{name.replace('-', '_')}"] = Action(f"move_{name.replace('-', '_')}", f"moving {name}", "move")
    for a in (Action("back_and_forth", "moving back and forth", "oscillate"),
              Action("up_and_down", "bouncing up and down", "oscillate"),
              Action("orbit_cw", "orbiting clockwise", "orbit"),
              Action("orbit_ccw", "orbiting anticlockwise", "orbit"),
              Action("zigzag", "zigzagging", "zigzag"),
              Action("grow", "growing", "size"),
              Action("shrink", "shrinking", "size"),
              Action("pulse", "pulsing", "size"),
              # held out from the start, never trained on: motions no other action shows as a whole
              Action("accelerate", "accelerating in a straight line", "accelerate"),
              Action("arc", "curving in an arc", "arc"),
              Action("corner", "turning a corner", "corner"),
              Action("drift_grow", "drifting diagonally while expanding", "move_size")):
        out[a.id] = a
    return out


ACTIONS: dict[str, Action] = _actions()

# unit direction (dx, dy) of the straight moves; image coordinates (y grows downwards)
_DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1),
               "up_left": (-1, -1), "up_right": (1, -1), "down_left": (-1, 1), "down_right": (1, 1)}

NAME_ACTIONS = ("known", "all", "none")
PAIR_MOTIONS = ("copy", "rescale")
SPLITS = ("base", "prism", "eval")


@dataclass(frozen=True)
class World:
    """Frame geometry and the objects in use (a subset of COLOURS and SHAPES)."""

    height: int = 64
    width: int = 64
    frames: int = 16  # designed frames per clip
    stride: int = 4  # files hold (frames - 1) * stride + 1 frames; read them with this stride
    fps: float = 8.0  # of the designed frames; files play at fps * stride
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow")
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    texture: float = 0.04  # largest background texture amplitude (a clip draws its own in [0, this])

    def __post_init__(self):
        object.__setattr__(self, "colours", tuple(self.colours))
        object.__setattr__(self, "shapes", tuple(self.shapes))
        if self.height < MIN_SIDE or self.width < MIN_SIDE:
            raise ValueError(f"the toy world needs frames of at least {MIN_SIDE}x{MIN_SIDE}, "
                             f"got {self.height}x{self.width}")
        if self.frames < MIN_FRAMES or self.stride < 1 or not self.fps > 0:
            raise ValueError(f"need frames >= {MIN_FRAMES}, stride >= 1, fps > 0; "
                             f"got {self.frames}, {self.stride}, {self.fps}")
        unknown = [c for c in self.colours if c not in COLOURS] + [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown colours/shapes {unknown}; colours: {list(COLOURS)}, shapes: {list(SHAPES)}")
        if len(set(self.colours)) < 2 or len(set(self.shapes)) < 2:
            raise ValueError("pairs need objects that differ in colour and shape: use >= 2 colours and >= 2 shapes")
        if not 0 <= self.texture <= 0.2:
            raise ValueError(f"texture must be in [0, 0.2], got {self.texture}")

    @property
    def file_frames(self) -> int:
        return (self.frames - 1) * self.stride + 1

    @property
    def file_fps(self) -> float:
        return self.fps * self.stride


@dataclass(frozen=True)
class Split:
    """Which actions each model trains on; held-out actions are for evaluation only."""

    base: tuple[str, ...]
    prism: tuple[str, ...]
    held_out: tuple[str, ...]

    def __post_init__(self):
        for name in ("base", "prism", "held_out"):
            actions = tuple(getattr(self, name))
            object.__setattr__(self, name, actions)
            unknown = [a for a in actions if a not in ACTIONS]
            if unknown or not actions or len(set(actions)) != len(actions):
                raise ValueError(f"Split.{name} must list distinct known actions, got {actions} "
                                 f"(actions: {list(ACTIONS)})")
        seen = set(self.held_out) & (set(self.base) | set(self.prism))
        if seen:
            raise ValueError(f"held-out actions must be unseen by both models; {sorted(seen)} are trained on")

    def knows(self, action: str) -> bool:
        """Whether the base model was trained on `action` (its captions then name it)."""
        return action in self.base

    def actions(self, split_name: str) -> tuple[str, ...]:
        if split_name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split_name!r}")
        return {"base": self.base, "prism": self.prism, "eval": self.held_out}[split_name]


DEFAULT_SPLIT = Split(
    base=("move_left", "move_right", "move_up", "move_down"),
    prism=("move_left", "move_right", "move_up", "move_down",
           "move_up_left", "move_up_right", "move_down_left", "move_down_right",
           "back_and_forth", "up_and_down", "orbit_ccw", "grow", "pulse"),
    held_out=("orbit_cw", "zigzag", "shrink", "accelerate", "arc", "corner", "drift_grow"),
)

# the held-out actions in two groups, which the evaluation reports apart: the first three, and the
# motions added later that no trained action resembles as a whole (curve, corner, acceleration,
# move with size change)
HELD_OUT_GROUPS: dict[str, tuple[str, ...]] = {
    "original": ("orbit_cw", "zigzag", "shrink"),
    "new_motions": ("accelerate", "arc", "corner", "drift_grow"),
}


# ---- clips ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClipSpec:
    """One clip. motion_seed: speed/amplitude, start position, size, growth factors.
    pattern_seed: the motion's form (orbit or arc start angle and turn, zigzag steepness, the
    direction of an acceleration, a corner or a drift, the ease-in power, where the corner bends).
    look_seed: background level and texture."""

    action: str
    colour: str
    shape: str
    motion_seed: int
    pattern_seed: int
    look_seed: int

    def __post_init__(self):
        if self.action not in ACTIONS or self.colour not in COLOURS or self.shape not in SHAPES:
            raise ValueError(f"unknown action/colour/shape in {self}")


def caption(colour: str, shape: str, action: str | None = None) -> str:
    """"a red circle moving left"; without `action`, just the object ("a red circle")."""
    article = "an" if colour[0] in "aeiou" else "a"
    text = f"{article} {colour} {shape}"
    return f"{text} {ACTIONS[action].phrase}" if action is not None else text


def names_action(policy: str, action: str, split: Split = DEFAULT_SPLIT) -> bool:
    """Whether captions name `action` under `policy` ("known": only actions the base knows)."""
    if policy not in NAME_ACTIONS:
        raise ValueError(f"name_actions must be one of {NAME_ACTIONS}, got {policy!r}")
    return policy == "all" or (policy == "known" and split.knows(action))


def clip_caption(spec: ClipSpec, policy: str = "known", split: Split = DEFAULT_SPLIT) -> str:
    return caption(spec.colour, spec.shape, spec.action if names_action(policy, spec.action, split) else None)


def _times(world: World, n: int | None) -> torch.Tensor:
    n = world.frames if n is None else n
    return torch.linspace(0, 1, n, dtype=torch.float64)


def _pattern(action: str, tau: torch.Tensor, pat: random.Random):
    """The unit-free form of the path (px, py): its scale and position are chosen by `trajectory`."""
    zero = torch.zeros_like(tau)
    kind = ACTIONS[action].kind
    if kind == "move":
        dx, dy = _DIRECTIONS[action.removeprefix("move_")]
        return dx * tau, dy * tau
    if action == "back_and_forth":
        return torch.sin(2 * math.pi * tau), zero
    if action == "up_and_down":
        return zero, -torch.sin(2 * math.pi * tau)
    if kind == "orbit":
        # with y downwards, increasing angle turns clockwise on screen
        start, turn = pat.uniform(0, 2 * math.pi), pat.uniform(0.75, 1.0)
        angle = start + (1 if action == "orbit_cw" else -1) * 2 * math.pi * turn * tau
        return torch.cos(angle), torch.sin(angle)
    if action == "zigzag":
        steep = pat.uniform(0.6, 1.2)  # stroke height / stroke length
        # 4 strokes: up-right, down-right, up-right, down-right
        ys = torch.tensor([0.0, -1.0, 0.0, -1.0, 0.0], dtype=torch.float64) * steep
        u = tau * 4
        i = u.floor().clamp(max=3).long()
        y = ys[i] + (ys[i + 1] - ys[i]) * (u - i)
        return 4 * tau, y
    if action == "accelerate":
        # from rest, ease-in: the distance covered grows as tau^power, along a line at any angle
        angle, power = pat.uniform(0, 2 * math.pi), pat.uniform(1.7, 2.3)
        s = tau**power
        return math.cos(angle) * s, math.sin(angle) * s
    if action == "arc":
        # a part of a circle, 0.35 to 0.55 of a turn, either way round: never a whole orbit
        start, turn, way = pat.uniform(0, 2 * math.pi), pat.uniform(0.35, 0.55), pat.choice((1, -1))
        angle = start + way * 2 * math.pi * turn * tau
        return torch.cos(angle), torch.sin(angle)
    if action == "corner":
        # an L at constant speed: along one axis until tau = bend, then along a perpendicular one
        first = pat.choice(((1, 0), (-1, 0), (0, 1), (0, -1)))
        side = pat.choice((1, -1))
        second = (-first[1] * side, first[0] * side)
        bend = pat.uniform(0.42, 0.58)
        a, b = tau.clamp(max=bend), (tau - bend).clamp(min=0)
        return first[0] * a + second[0] * b, first[1] * a + second[1] * b
    if action == "drift_grow":
        dx, dy = _DIRECTIONS[pat.choice(("up_left", "up_right", "down_left", "down_right"))]
        return dx * tau, dy * tau
    return zero, zero  # size actions stay in place


def _log_scale(action: str, tau: torch.Tensor, mot: random.Random) -> torch.Tensor:
    if action in ("grow", "shrink"):
        small, big = math.log(mot.uniform(0.6, 0.7)), math.log(mot.uniform(1.3, 1.5))
        start, end = (small, big) if action == "grow" else (big, small)
        return start + (end - start) * tau
    if action == "pulse":
        return math.log(mot.uniform(1.5, 1.8)) * torch.sin(math.pi * tau)
    if action == "drift_grow":
        small, big = math.log(mot.uniform(0.7, 0.8)), math.log(mot.uniform(1.3, 1.45))
        return small + (big - small) * tau
    return torch.zeros_like(tau)


def trajectory(spec: ClipSpec, world: World = World(), n: int | None = None):
    """(x, y, r) float64 tensors of n frames (default world.frames) at tau = linspace(0, 1, n):
    the object's centroid in pixels (pixel (i, j) covers [j, j+1] x [i, i+1]) and its half-extent."""
    tau = _times(world, n)
    unit = min(world.height, world.width) / 64
    mot = random.Random(spec.motion_seed)
    px, py = _pattern(spec.action, tau, random.Random(spec.pattern_seed))
    # sizes and extents from a fixed fine grid, so that any n samples one and the same motion
    dense = torch.linspace(0, 1, 64 * 15 + 1, dtype=torch.float64)
    dx, dy = _pattern(spec.action, dense, random.Random(spec.pattern_seed))
    # half-extent in pixels at 64x64: 6 to 8.5; pulsing peaks at 1.5-1.8x, growth spans 0.6-0.7x to
    # 1.3-1.5x, drifting while expanding 0.7-0.8x to 1.3-1.45x of 6 to 7.5: the object is never
    # under ~8 pixels (one f8 latent pixel) or over ~26 pixels wide
    base_size = {"pulse": (5.0, 6.5), "grow": (7.0, 8.5), "shrink": (7.0, 8.5),
                 "drift_grow": (6.0, 7.5)}.get(spec.action, (6.0, 8.5))
    base_size = mot.uniform(*base_size)
    state = mot.getstate()
    r = base_size * unit * torch.exp(_log_scale(spec.action, tau, mot))
    mot.setstate(state)
    big = base_size * unit * float(torch.exp(_log_scale(spec.action, dense, mot)).max())
    # where the centroid may go: 1 pixel clear of the edges for every shape (a triangle's apex is
    # 4r/3 above its centroid); the same for all shapes, so a "copy" pair shares one trajectory
    left, right, top, bottom = big + 1, world.width - big - 1, 4 * big / 3 + 1, world.height - big - 1
    ex, ey = float(dx.max() - dx.min()), float(dy.max() - dy.min())
    fill = mot.uniform(0.55, 0.9)
    fits = [room / e for room, e in ((right - left, ex), (bottom - top, ey)) if e > 1e-9]
    scale = fill * min(fits) if fits else 0.0
    x0 = mot.uniform(left - scale * float(dx.min()), right - scale * float(dx.max()))
    y0 = mot.uniform(top - scale * float(dy.min()), bottom - scale * float(dy.max()))
    return px * scale + x0, py * scale + y0, r


def _half_planes(shape: str, r: torch.Tensor):
    """Outward unit normals and offsets (distance from the centroid) of a convex polygon's edges."""
    if shape == "square":
        return [((1, 0), r), ((-1, 0), r), ((0, 1), r), ((0, -1), r)]
    if shape == "diamond":
        k = 1 / math.sqrt(2)
        return [((k, k), r * k), ((-k, k), r * k), ((k, -k), r * k), ((-k, -k), r * k)]
    if shape == "triangle":
        # apex up at (0, -4r/3), base corners (+-r, 2r/3): bounding box 2r x 2r, centroid at 0
        n = 1 / math.sqrt(5)  # the slanted sides' normals are (+-2, -1)/sqrt(5)
        return [((0, 1), r * 2 / 3), ((2 * n, -n), r * 4 / 3 * n), ((-2 * n, -n), r * 4 / 3 * n)]
    raise ValueError(shape)


def coverage(shape: str, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor, height: int, width: int):
    """(n, height, width) anti-aliased coverage in [0, 1] of the shape at centroids (x, y), size r."""
    gy = torch.arange(height, dtype=torch.float64).view(1, -1, 1) + 0.5
    gx = torch.arange(width, dtype=torch.float64).view(1, 1, -1) + 0.5
    dx, dy = gx - x.view(-1, 1, 1), gy - y.view(-1, 1, 1)
    rr = r.view(-1, 1, 1)
    if shape == "circle":
        distance = torch.sqrt(dx * dx + dy * dy) - rr
    else:
        distance = torch.stack([nx * dx + ny * dy - c for (nx, ny), c in _half_planes(shape, rr)]).amax(0)
    return (0.5 - distance).clamp(0, 1)


def background(spec: ClipSpec, world: World = World()) -> torch.Tensor:
    """(h, w, 3) static achromatic background: a grey level plus a smooth low-contrast texture."""
    look = random.Random(spec.look_seed)
    level, amplitude = look.uniform(0.3, 0.6), look.uniform(0.0, world.texture)
    g = torch.Generator().manual_seed(look.getrandbits(62))
    cells = max(2, round(min(world.height, world.width) / 12))
    noise = torch.rand(1, 1, cells, cells, generator=g, dtype=torch.float64) * 2 - 1
    smooth = F.interpolate(noise, size=(world.height, world.width), mode="bicubic", align_corners=False)[0, 0]
    grey = (level + amplitude * smooth.clamp(-1, 1)).unsqueeze(-1)
    return grey.expand(world.height, world.width, 3)


def render(spec: ClipSpec, world: World = World(), n: int | None = None) -> torch.Tensor:
    """(n, h, w, 3) float32 frames in [0, 1]; n defaults to world.frames (the designed frames);
    world.file_frames gives what files hold (designed frame i is file frame i * stride)."""
    x, y, r = trajectory(spec, world, n)
    alpha = coverage(spec.shape, x, y, r, world.height, world.width).unsqueeze(-1)  # (n, h, w, 1)
    colour = torch.tensor(COLOURS[spec.colour], dtype=torch.float64)
    frames = background(spec, world) * (1 - alpha) + colour * alpha
    return frames.clamp(0, 1).float()


# ---- datasets --------------------------------------------------------------------------------------

def _seeds(rng: random.Random) -> int:
    return rng.getrandbits(62)


def sample_clip(rng: random.Random, action: str, world: World, colour: str | None = None,
                shape: str | None = None) -> ClipSpec:
    colour = rng.choice(world.colours) if colour is None else colour
    shape = rng.choice(world.shapes) if shape is None else shape
    return ClipSpec(action, colour, shape, _seeds(rng), _seeds(rng), _seeds(rng))


def sample_pair(rng: random.Random, action: str, world: World, pair_motion: str = "copy"):
    """(target, reference) of `action` whose objects differ in colour and shape."""
    if pair_motion not in PAIR_MOTIONS:
        raise ValueError(f"pair_motion must be one of {PAIR_MOTIONS}, got {pair_motion!r}")
    target = sample_clip(rng, action, world)
    reference = sample_clip(rng, action, world, rng.choice([c for c in world.colours if c != target.colour]),
                            rng.choice([s for s in world.shapes if s != target.shape]))
    reference = replace(reference, pattern_seed=target.pattern_seed)
    if pair_motion == "copy":
        reference = replace(reference, motion_seed=target.motion_seed)
    return target, reference


def write_json(path: Path, data) -> None:
    from ..common.files import atomic_write

    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _write_clip(job) -> None:
    """Render one clip and write it as a video (a top-level function: worker processes run it)."""
    from ..video_io import write_video

    spec, world, path = job
    write_video(path, render(spec, world, world.file_frames), world.file_fps)


def write_clips(jobs: list, workers: int, progress=None) -> None:
    """Write (spec, world, path) clips, in `workers` spawned processes when more than one;
    progress(done, total) after each. A failure cancels the clips not started."""
    if workers == 1:
        done, pool = map(_write_clip, jobs), None
    else:
        import concurrent.futures
        import multiprocessing

        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                      initializer=_init_worker)
        done = pool.map(_write_clip, jobs, chunksize=8)
    try:
        for k, _ in enumerate(done, 1):
            if progress is not None:
                progress(k, len(jobs))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _init_worker() -> None:
    torch.set_num_threads(1)  # the tensors are tiny; threads would only fight the other workers


def write_dataset(out_dir, split_name: str, n: int, seed: int = 0, *, world: World = World(),
                  split: Split = DEFAULT_SPLIT, name_actions: str = "known", pair_motion: str = "copy",
                  drop_action: float = 0.25, workers: int = 1, progress=None) -> Path:
    """Write `n` pairs ("prism", "eval") or `n` videos ("base") under out_dir/<split_name>/ and
    return the JSON's path. Actions go round-robin over the split's actions (balanced); objects,
    motions and looks come from a generator seeded by (split_name, seed) only, and every clip is
    chosen before any is rendered, so `workers` (spawned processes; a calling script needs the
    usual `if __name__ == "__main__":` guard) changes the speed, never the JSON or the frames.
    `progress(done, total)` is called as videos are written. The JSON is written last."""
    actions = split.actions(split_name)
    names_action(name_actions, actions[0], split)  # validates the policy
    if not 0 <= drop_action <= 1:
        raise ValueError(f"drop_action must be in [0, 1], got {drop_action}")
    if n < 1 or workers < 1:
        raise ValueError(f"need n >= 1 and workers >= 1, got n={n}, workers={workers}")
    folder = Path(out_dir) / split_name
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"echoreel-toy/{split_name}/{seed}")

    entries, jobs = [], []

    def video(spec: ClipSpec, name: str) -> str:
        jobs.append((spec, world, folder / "videos" / name))
        return f"videos/{name}"

    for i in range(n):
        action = actions[i % len(actions)]
        if split_name == "base":
            spec = sample_clip(rng, action, world)
            drop = rng.random() < drop_action
            text = clip_caption(spec, "none" if drop else name_actions, split)
            entries.append({"caption": text, "video_path": video(spec, f"{i:05d}.mp4"), "action": action,
                            "clip": asdict(spec)})
        else:
            target, reference = sample_pair(rng, action, world, pair_motion)
            entries.append({
                "input_text": clip_caption(target, name_actions, split),
                "gt_video_path": video(target, f"{i:05d}_target.mp4"),
                "inject_text": clip_caption(reference, name_actions, split),
                "inject_video_path": video(reference, f"{i:05d}_reference.mp4"),
                "action": action, "target_clip": asdict(target), "reference_clip": asdict(reference),
            })

    write_clips(jobs, workers, progress)
    meta = {"split": split_name, "seed": seed, "world": asdict(world), "actions": asdict(split),
            "name_actions": name_actions, "pair_motion": pair_motion,
            "drop_action": drop_action if split_name == "base" else None}
    write_json(folder / "world.json", meta)
    path = folder / f"{split_name}.json"
    write_json(path, entries)  # last: a JSON on disk means all its videos are there
    return path


def clip_from_json(d: dict) -> ClipSpec:
    """The ClipSpec stored in a dataset entry ("clip", "target_clip" or "reference_clip")."""
    return ClipSpec(**d)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m echoreel_core.toy.world",
                                     description="Write the toy world's base, prism and eval datasets.")
    parser.add_argument("out_dir")
    count = at_least(1, "a count")  # every split is written, and a dataset holds at least one entry
    parser.add_argument("--pairs", type=count, default=1024, help="Prism training pairs (default 1024)")
    parser.add_argument("--base-videos", type=count, default=1024, help="base text-to-video videos (default 1024)")
    parser.add_argument("--eval-pairs", type=count, default=96, help="held-out evaluation pairs (default 96)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name-actions", choices=NAME_ACTIONS, default="known",
                        help="which actions captions name (default: those the base model knows)")
    parser.add_argument("--pair-motion", choices=PAIR_MOTIONS, default="copy")
    parser.add_argument("--size", type=at_least(MIN_SIDE, "a side in pixels"), default=64,
                        help=f"frame height and width (default 64, at least {MIN_SIDE})")
    parser.add_argument("--frames", type=at_least(MIN_FRAMES), default=16,
                        help=f"designed frames per clip (default 16, at least {MIN_FRAMES})")
    parser.add_argument("--stride", type=at_least(1), default=4,
                        help="files hold (frames-1)*stride+1 frames (default 4)")
    parser.add_argument("--workers", type=at_least(1), default=min(4, os.cpu_count() or 1),
                        help="processes writing videos (the files do not depend on it)")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    print(configure_threads(args.threads), file=sys.stderr)
    world = World(height=args.size, width=args.size, frames=args.frames, stride=args.stride)
    for split_name, n in (("base", args.base_videos), ("prism", args.pairs), ("eval", args.eval_pairs)):
        start = time.perf_counter()

        def progress(k, total, split_name=split_name):
            if k == total or k % 256 == 0:
                print(f"{split_name}: {k}/{total} videos", file=sys.stderr, flush=True)

        path = write_dataset(args.out_dir, split_name, n, args.seed, world=world, name_actions=args.name_actions,
                             pair_motion=args.pair_motion, workers=args.workers, progress=progress)
        print(f"wrote {path} ({n} {'videos' if split_name == 'base' else 'pairs'}, "
              f"{time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
