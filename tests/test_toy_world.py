"""The toy world (echoreel_core.toy): generator determinism, dataset files the trainer reads, each
action's motion as the tracker sees it, and the measures (fidelity, leakage, detection) on clean,
mp4-coded and blurred clips. Everything is 64x64 and a few clips: the file runs in seconds."""

import dataclasses
import json
import math
import pathlib
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from echoreel_core.training.data import VideoSpec, load_entries, read_clip
from echoreel_core.toy import metrics, world
from echoreel_core.toy.metrics import (
    Track, detection_rate, grid, grid_image, leaked, motion_cosine,
    motion_fidelity, motion_vector, path_cosine, track, travels, video_object,
)
from echoreel_core.toy.world import (
    ACTIONS, DEFAULT_SPLIT, HELD_OUT_GROUPS, ClipSpec, Split, World, background, caption, clip_caption, render,
    sample_pair, trajectory, write_dataset,
)
from echoreel_core.video_io import model_output_to_frames, read_video_frames, write_video

W = World()


def clip(action, colour="red", shape="circle", seed=1):
    return ClipSpec(action, colour, shape, seed, seed + 1000, seed + 2000)


def blur(frames, sigma=1.0):
    """Separable Gaussian blur of (t, h, w, 3) frames: a stand-in for a VAE's smoothing."""
    k = int(3 * sigma) * 2 + 1
    x = torch.arange(k, dtype=torch.float32) - k // 2
    g = torch.exp(-x**2 / (2 * sigma**2))
    g = g / g.sum()
    t, h, w, _ = frames.shape
    v = frames.permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    v = F.conv2d(F.pad(v, (k // 2, k // 2, 0, 0), mode="replicate"), g.view(1, 1, 1, k))
    v = F.conv2d(F.pad(v, (0, 0, k // 2, k // 2), mode="replicate"), g.view(1, 1, k, 1))
    return v.reshape(t, 3, h, w).permute(0, 2, 3, 1)


def xs_ys_areas(tr):
    assert all(d is not None for d in tr)
    return ([d.x for d in tr], [d.y for d in tr], [d.area for d in tr])


# ---- the generator ---------------------------------------------------------------------------------

def test_render_is_deterministic_and_seeds_matter():
    spec = clip("orbit_cw", "blue", "triangle", seed=7)
    a, b = render(spec), render(spec)
    assert a.shape == (16, 64, 64, 3) and a.dtype == torch.float32 and torch.equal(a, b)
    assert 0 <= float(a.min()) and float(a.max()) <= 1
    assert not torch.equal(a, render(clip("orbit_cw", "blue", "triangle", seed=8)))
    # files hold 61 frames; every 4th is a designed frame
    assert torch.allclose(render(spec, W, W.file_frames)[::4], a, atol=1e-6)


def test_objects_stay_inside_the_frame_and_background_is_grey():
    rng = random.Random(0)
    for action in ACTIONS:
        for _ in range(6):
            spec = world.sample_clip(rng, action, W)
            x, y, r = trajectory(spec, W, W.file_frames)
            assert float((x - r).min()) >= 1 - 1e-9 and float((x + r).max()) <= 63 + 1e-9
            assert float((y - 4 * r / 3).min()) >= 1 - 1e-9 and float((y + r).max()) <= 63 + 1e-9  # apex: 4r/3 up
            assert 4.0 <= float(r.min()) and float(r.max()) <= 13
    bg = background(clip("grow"))
    assert torch.equal(bg[..., 0], bg[..., 1]) and torch.equal(bg[..., 1], bg[..., 2])  # achromatic
    assert float(bg.max() - bg.min()) <= 2 * W.texture + 1e-9  # low contrast


def test_captions_and_split():
    assert caption("red", "circle", "move_left") == "a red circle moving left"
    assert caption("red", "circle") == "a red circle"
    assert clip_caption(clip("move_up_right")) == "a red circle"  # the base does not know diagonals
    assert clip_caption(clip("move_left")) == "a red circle moving left"
    assert clip_caption(clip("orbit_cw"), "all") == "a red circle orbiting clockwise"
    assert clip_caption(clip("move_left"), "none") == "a red circle"
    s = DEFAULT_SPLIT
    assert not set(s.held_out) & (set(s.base) | set(s.prism))
    assert set(s.base) <= set(s.prism) and set(s.base) | set(s.prism) | set(s.held_out) == set(ACTIONS)
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
    assert {f"move_{opposite[a.removeprefix('move_')]}" for a in s.base} == set(s.base)  # closed under reversal
    with pytest.raises(ValueError, match="unseen"):
        Split(base=("move_left",), prism=("zigzag",), held_out=("zigzag",))
    with pytest.raises(ValueError, match="known actions"):
        Split(base=("moonwalk",), prism=("zigzag",), held_out=("grow",))


def test_pairs_differ_in_colour_and_shape_and_share_the_motion():
    rng = random.Random(3)
    for mode in ("copy", "rescale"):
        for action in ("orbit_cw", "zigzag", "grow"):
            target, reference = sample_pair(rng, action, W, mode)
            assert target.colour != reference.colour and target.shape != reference.shape
            assert target.look_seed != reference.look_seed
            cos = motion_cosine(track(render(target)), track(render(reference)))
            assert cos > 0.97, (mode, action, cos)
            if mode == "copy":
                assert all(torch.equal(a, b) for a, b in zip(trajectory(target), trajectory(reference)))


# ---- datasets --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    out = {}
    for name in ("a", "b"):
        out[name] = {split: write_dataset(root / name, split, 3, seed=5) for split in ("base", "prism", "eval")}
    out["other_seed"] = write_dataset(root / "c", "prism", 3, seed=6)
    return out


def test_datasets_are_deterministic_for_a_seed(datasets):
    a, b = datasets["a"], datasets["b"]
    for split in ("base", "prism", "eval"):
        assert a[split].read_bytes() == b[split].read_bytes()
        assert (a[split].parent / "world.json").read_bytes() == (b[split].parent / "world.json").read_bytes()
    # the frames are a function of the JSON; the mp4 bytes are not compared: libx264 with its default
    # threads is not bit-reproducible run to run, so the decoded pixels may differ by a few levels
    entry = json.loads(a["prism"].read_text())[0]
    designed = render(world.clip_from_json(entry["target_clip"]))
    assert torch.equal(designed, render(world.clip_from_json(entry["target_clip"])))
    for d in (a, b):
        decoded, _, _ = read_video_frames(d["prism"].parent / entry["gt_video_path"], 16, 4)
        assert float((decoded - designed).abs().mean()) < 0.01
    assert datasets["other_seed"].read_bytes() != a["prism"].read_bytes()


def test_pair_json_is_the_official_format(datasets):
    for split, actions in (("prism", DEFAULT_SPLIT.prism), ("eval", DEFAULT_SPLIT.held_out)):
        path = datasets["a"][split]
        entries, skips = load_entries(path)
        assert len(entries) == 3 and not skips
        raw = json.loads(path.read_text())
        for entry, item in zip(entries, raw):
            assert entry.target.is_file() and entry.reference.is_file()
            assert item["action"] == actions[entry.index % len(actions)]
            t, r = world.clip_from_json(item["target_clip"]), world.clip_from_json(item["reference_clip"])
            assert (t.colour, t.shape) != (r.colour, r.shape) and t.colour != r.colour and t.shape != r.shape
            named = DEFAULT_SPLIT.knows(item["action"])
            assert entry.prompt == caption(t.colour, t.shape, item["action"] if named else None)
            assert entry.caption == caption(r.colour, r.shape, item["action"] if named else None)
    # the trainer's reader (16 frames, stride 4, from 0) gets exactly the designed frames
    entry = load_entries(datasets["a"]["eval"])[0][0]
    item = json.loads(datasets["a"]["eval"].read_text())[0]
    pixels, notes = read_clip(entry.reference, VideoSpec(height=64, width=64), is_target=False)
    frames = model_output_to_frames(pixels)
    assert not notes and frames.shape == (16, 64, 64, 3)
    designed = render(world.clip_from_json(item["reference_clip"]))
    assert float((frames - designed).abs().mean()) < 0.02


def test_base_json(datasets):
    path = datasets["a"]["base"]
    raw = json.loads(path.read_text())
    assert len(raw) == 3 and set(raw[0]) == {"caption", "video_path", "action", "clip"}
    for item in raw:
        assert item["action"] in DEFAULT_SPLIT.base and (path.parent / item["video_path"]).is_file()
        spec = world.clip_from_json(item["clip"])
        assert item["caption"] in (caption(spec.colour, spec.shape, spec.action), caption(spec.colour, spec.shape))


def test_held_out_groups_split_the_held_out_actions_and_stay_unseen():
    """The original three first (the eval set's first pairs, which the reduced evaluation runs), then
    the new motions; none of them in the base's or the Prism's training actions."""
    original, new = HELD_OUT_GROUPS["original"], HELD_OUT_GROUPS["new_motions"]
    assert DEFAULT_SPLIT.held_out == original + new and len(new) >= 4
    assert original == ("orbit_cw", "zigzag", "shrink")
    assert not set(new) & (set(DEFAULT_SPLIT.base) | set(DEFAULT_SPLIT.prism))
    for action in new:
        assert not DEFAULT_SPLIT.knows(action) and clip_caption(clip(action)) == "a red circle"  # never named
        assert clip_caption(clip(action), "all") == f"a red circle {ACTIONS[action].phrase}"
    phrases = [a.phrase for a in ACTIONS.values()]
    assert len(set(phrases)) == len(phrases)


def test_eval_set_covers_every_held_out_action(tmp_path):
    tiny = World(height=32, width=32, frames=2, stride=1)  # the JSON does not depend on the frames
    path = write_dataset(tmp_path, "eval", len(DEFAULT_SPLIT.held_out), seed=0, world=tiny)
    assert [e["action"] for e in json.loads(path.read_text())] == list(DEFAULT_SPLIT.held_out)


def test_base_and_prism_datasets_are_unchanged_by_the_new_motions(tmp_path):
    """The SHA-256 of the base and prism JSON (20 entries, seed 0) as they were written before the
    new held-out motions existed: adding actions must not move any clip of the trained ones (the
    JSON records every ClipSpec, which determines the frames). Python's random is the same on every
    platform, so the digests are too; a deliberate change to the datasets must update them."""
    import hashlib

    tiny = World(height=32, width=32, frames=2, stride=1)  # the JSON does not depend on the frames
    digests = {split: hashlib.sha256(write_dataset(tmp_path, split, 20, seed=0, world=tiny).read_bytes()).hexdigest()
               for split in ("prism", "base")}
    assert digests == {"prism": "88a57cde293aa592dee171bc8a46abad4b75fb136614168dc41dc76dca88d69b",
                       "base": "ad01da5cc4a922721a6ffe7658194348d717dd72ae9880104eb684fbcfad051d"}


def test_cli_writes_every_split(tmp_path):
    assert world.main([str(tmp_path), "--pairs", "1", "--base-videos", "1", "--eval-pairs", "1", "--stride", "1",
                       "--workers", "1", "--threads", "1"]) == 0  # --threads 1: the suite's count (conftest.py)
    for split in ("base", "prism", "eval"):
        meta = json.loads((tmp_path / split / "world.json").read_text())
        assert meta["world"]["stride"] == 1 and (tmp_path / split / f"{split}.json").is_file()
    assert len(load_entries(tmp_path / "eval" / "eval.json")[0]) == 1


@pytest.mark.parametrize("option, value, allowed", [
    ("--base-videos", "0", "a count >= 1"), ("--pairs", "-3", "a count >= 1"), ("--eval-pairs", "0", "a count >= 1"),
    ("--pairs", "many", "a count >= 1"), ("--size", "16", "a side in pixels >= 32"),
    ("--frames", "1", "an integer >= 2"), ("--stride", "0", "an integer >= 1"), ("--workers", "0", "an integer >= 1"),
])
def test_cli_refuses_impossible_sizes_and_counts(tmp_path, capsys, option, value, allowed):
    """A usage error naming the option, the value and what is allowed; nothing written."""
    with pytest.raises(SystemExit) as refused:
        world.main([str(tmp_path / "out"), option, value])
    assert refused.value.code == 2
    assert f"error: argument {option}: must be {allowed}, got '{value}'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_refusal_is_a_usage_error_not_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "echoreel_core.toy.world", str(tmp_path), "--base-videos", "0"],
                            cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == ("python -m echoreel_core.toy.world: error: argument --base-videos: "
                                              "must be a count >= 1, got '0'")
    assert "Traceback" not in result.stderr


# ---- tracking each action --------------------------------------------------------------------------

def mean_step(values):
    return sum(b - a for a, b in zip(values, values[1:])) / (len(values) - 1)


@pytest.mark.parametrize("action", list(ACTIONS))
def test_tracker_recovers_each_action(action):
    for colour, shape, seed in (("red", "circle", 1), ("yellow", "triangle", 2), ("blue", "square", 3)):
        tr = track(render(clip(action, colour, shape, seed)))
        xs, ys, areas = xs_ys_areas(tr)
        assert all(d.colour == colour and d.shape == shape for d in tr)
        dx, dy = mean_step(xs), mean_step(ys)
        growth = [b / a for a, b in zip(areas, areas[1:])]
        if ACTIONS[action].kind == "move":
            want = world._DIRECTIONS[action.removeprefix("move_")]
            for got, sign in ((dx, want[0]), (dy, want[1])):
                assert (got > 0.8) if sign > 0 else (got < -0.8) if sign < 0 else abs(got) < 0.05
        if ACTIONS[action].kind not in ("size", "move_size"):
            assert max(areas) / min(areas) < 1.05  # the size stays put
        if action == "back_and_forth":
            assert xs[3] > xs[0] and xs[11] < xs[3] and xs[15] > xs[11] and max(ys) - min(ys) < 0.1
        if action == "up_and_down":
            assert ys[3] < ys[0] and ys[11] > ys[3] and max(xs) - min(xs) < 0.1
        if ACTIONS[action].kind == "orbit":  # image y points down: clockwise on screen = positive cross
            steps = [(b - a, d - c) for a, b, c, d in zip(xs, xs[1:], ys, ys[1:])]
            cross = sum(u[0] * v[1] - u[1] * v[0] for u, v in zip(steps, steps[1:]))
            assert cross > 0 if action == "orbit_cw" else cross < 0
        if action == "zigzag":
            assert dx > 0.8 and ys[2] < ys[0] and ys[6] > ys[2] and ys[10] < ys[6] and ys[14] > ys[10]
        if action == "grow":
            assert all(g > 1 for g in growth) and areas[-1] / areas[0] > 3
        if action == "shrink":
            assert all(g < 1 for g in growth) and areas[0] / areas[-1] > 3
        if action == "pulse":
            assert all(g > 1 for g in growth[:7]) and all(g < 1 for g in growth[8:])
        if ACTIONS[action].kind == "size":
            assert max(xs) - min(xs) < 0.1 and max(ys) - min(ys) < 0.1


def tracked_path(spec):
    """The tracker's centroids, step vectors (pixels) and areas of a rendered clip."""
    tr = track(render(spec))
    xs, ys, areas = xs_ys_areas(tr)
    assert {(d.colour, d.shape) for d in tr} == {(spec.colour, spec.shape)}
    steps = [(b - a, d - c) for a, b, c, d in zip(xs, xs[1:], ys, ys[1:])]
    return xs, ys, steps, areas


def length(v):
    return (v[0] ** 2 + v[1] ** 2) ** 0.5


def heading(v):
    return math.degrees(math.atan2(v[1], v[0]))


def accelerates(spec) -> bool:
    """Along one straight line, each step at least as long as the one before (within the tracker's
    ~0.05 pixel noise), the last three steps together over 3x the first three; the size kept."""
    _, _, steps, areas = tracked_path(spec)
    lengths = [length(v) for v in steps]
    whole = (sum(u for u, _ in steps), sum(v for _, v in steps))
    straight = length(whole) > 1 and all((u * whole[0] + v * whole[1]) / (length((u, v)) * length(whole)) > 0.99
                                         for u, v in steps if length((u, v)) > 0.3)
    growing = all(b >= a - 0.1 for a, b in zip(lengths, lengths[1:])) and sum(lengths[-3:]) > 3 * sum(lengths[:3])
    return straight and growing and max(areas) / min(areas) < 1.05


def arcs(spec) -> bool:
    """Turns one way at every step, by 100 to 200 degrees in all (a part of a circle: an orbit
    turns 270 to 360), at an even speed; the size kept."""
    _, _, steps, areas = tracked_path(spec)
    cross = [u[0] * v[1] - u[1] * v[0] for u, v in zip(steps, steps[1:])]
    one_way = all(c > 0 for c in cross) or all(c < 0 for c in cross)
    turned = sum(math.degrees(math.asin(max(-1.0, min(1.0, c / (length(u) * length(v))))))
                 for c, u, v in zip(cross, steps, steps[1:]))
    lengths = [length(v) for v in steps]
    even = max(lengths) / min(lengths) < 1.1
    return one_way and 100 <= abs(turned) <= 200 and even and max(areas) / min(areas) < 1.05


def turns_a_corner(spec) -> bool:
    """Steps 0-5 (tau <= 0.4) along one axis, steps 9-14 (tau >= 0.6) along the perpendicular one,
    each leg in one direction, at one speed; the size kept."""
    _, _, steps, areas = tracked_path(spec)
    first, second = steps[:6], steps[9:]

    def along(leg, axis):  # every step along `axis` (0: x, 1: y), the same way, barely across
        return (all(abs(v[1 - axis]) < 0.15 and abs(v[axis]) > 0.5 for v in leg)
                and len({v[axis] > 0 for v in leg}) == 1)

    axis = 0 if abs(first[0][0]) > abs(first[0][1]) else 1
    speeds = [length(v) for v in first + second]
    return (along(first, axis) and along(second, 1 - axis) and max(speeds) / min(speeds) < 1.05
            and max(areas) / min(areas) < 1.05)


def drifts_diagonally_while_expanding(spec) -> bool:
    """Every step diagonal (|dx| and |dy| equal within 10 %, over half a pixel, one direction
    throughout), the area growing at every step and over 2x in all."""
    _, _, steps, areas = tracked_path(spec)
    diagonal = all(abs(u) > 0.5 and abs(v) > 0.5 and 0.9 < abs(u) / abs(v) < 1.1 for u, v in steps)
    one_way = len({(u > 0, v > 0) for u, v in steps}) == 1
    growth = [b / a for a, b in zip(areas, areas[1:])]
    return diagonal and one_way and all(g > 1 for g in growth) and areas[-1] / areas[0] > 2


NEW_MOTIONS = {"accelerate": accelerates, "arc": arcs, "corner": turns_a_corner,
               "drift_grow": drifts_diagonally_while_expanding}
# actions each check must reject: the nearest trained or original motions
LOOKALIKES = {"accelerate": ("move_right", "move_up_left", "back_and_forth"),
              "arc": ("orbit_cw", "orbit_ccw", "move_down"),
              "corner": ("move_up_right", "zigzag", "arc"),
              "drift_grow": ("grow", "move_down_left", "accelerate")}


def test_every_new_motion_has_a_check():
    assert set(NEW_MOTIONS) == set(HELD_OUT_GROUPS["new_motions"]) == set(LOOKALIKES)


@pytest.mark.parametrize("action", list(NEW_MOTIONS))
def test_new_motions_do_what_their_names_say(action):
    """Rendered and tracked, each new motion passes its check for varied seeds and objects, and the
    check rejects the motions it could be mistaken for (so it can fail)."""
    check = NEW_MOTIONS[action]
    rng = random.Random(action)
    for colour, shape in (("red", "circle"), ("yellow", "triangle"), ("blue", "square"), ("green", "triangle")):
        for _ in range(2):
            spec = world.sample_clip(rng, action, W, colour, shape)
            assert check(spec), spec
    for other in LOOKALIKES[action]:
        assert not check(clip(other, "green", "square", seed=5)), other


def test_new_motions_vary_with_their_pattern_seed():
    """Direction (accelerate, corner, drift_grow) and turning way (arc) come from the pattern seed:
    over 24 seeds every action shows more than one; the corner both axis orders."""
    for action in NEW_MOTIONS:
        kinds = set()
        for seed in range(24):
            x, y, _ = trajectory(ClipSpec(action, "red", "circle", 7, seed, 0))
            dx, dy = x[1:] - x[:-1], y[1:] - y[:-1]
            if action == "arc":
                kinds.add(bool((dx[:-1] * dy[1:] - dy[:-1] * dx[1:]).sum() > 0))
            elif action == "corner":
                kinds.add((bool(abs(dx[0]) > abs(dy[0])), bool(dx[0] + dy[0] > 0), bool(dx[-1] + dy[-1] > 0)))
            else:
                kinds.add((bool(dx.sum() > 0), bool(dy.sum() > 0)))
        assert len(kinds) >= {"arc": 2, "corner": 6}.get(action, 3), (action, kinds)


def test_detection_rate_clean_blank_and_partial():
    video = render(clip("zigzag", "green", "triangle"))
    assert detection_rate(track(video)) == 1.0
    blank = background(clip("zigzag")).float().expand(16, 64, 64, 3)
    assert detection_rate(track(blank)) == 0.0
    half = video.clone()
    half[::2] = blank[::2]
    tr = track(half)
    assert detection_rate(tr) == 0.5 and detection_rate([tr, track(video)]) == 0.75
    assert all((d is None) == (i % 2 == 0) for i, d in enumerate(tr))


@pytest.mark.parametrize("degrade", ["mp4", "blur", "mp4+blur"])
def test_tracker_survives_lossy_coding_and_blur(degrade, tmp_path):
    rng = random.Random(11)
    for action, colour, shape in (("orbit_cw", "red", "triangle"), ("shrink", "blue", "circle"),
                                  ("move_down_left", "yellow", "square"), ("zigzag", "green", "circle")):
        spec = world.sample_clip(rng, action, W, colour, shape)
        clean = render(spec)
        video = clean
        if "mp4" in degrade:
            path = write_video(tmp_path / f"{action}.mp4", render(spec, W, W.file_frames), W.file_fps)
            video, _, _ = read_video_frames(path, 16, 4)
        if "blur" in degrade:
            video = blur(video, 1.0)
        tr = track(video, W.colours, W.shapes)
        assert detection_rate(tr) == 1.0
        assert video_object(tr) == (colour, shape)
        assert sum(d.shape == shape for d in tr) >= 15
        assert motion_cosine(tr, track(clean)) > 0.97, action


# ---- the measures ----------------------------------------------------------------------------------

def test_motion_fidelity():
    left = track(render(clip("move_left", "red", "circle", 1)))
    assert motion_cosine(left, left) == pytest.approx(1.0)
    other_object = track(render(clip("move_left", "blue", "square", 1)))  # same trajectory, other object
    assert motion_cosine(left, other_object) > 0.9
    rescaled = track(render(ClipSpec("move_left", "yellow", "triangle", 99, 1001, 5)))  # other speed and place
    assert motion_cosine(left, rescaled) > 0.9
    right = track(render(clip("move_right", "red", "circle", 1)))
    assert motion_cosine(left, right) < -0.9
    grow, shrink = (track(render(clip(a, "green", "square", 2))) for a in ("grow", "shrink"))
    assert motion_cosine(grow, shrink) < -0.9
    assert abs(motion_cosine(grow, left)) < 0.1  # unrelated: size change vs translation
    assert motion_fidelity([left, left, left], [left, other_object, right]) == pytest.approx(
        (1 + motion_cosine(left, other_object) + motion_cosine(left, right)) / 3)
    v = motion_vector(left)
    assert v.shape == (45,) and float(v[:15].mean()) < 0 and float(v[15:].abs().max()) < 5e-3
    # the same path drawn by an object whose size flickers: the size part counts, the path part ignores it
    flicker = Track(tuple(dataclasses.replace(d, area=d.area * (1.5 if i % 2 else 1.0)) for i, d in enumerate(left)),
                    left.height, left.width)
    assert motion_cosine(flicker, left) < 0.5
    assert motion_cosine(flicker, left, size_weight=0.0) == pytest.approx(1.0)


def test_path_fidelity_is_defined_only_for_a_reference_that_travels():
    """A shrinking reference stays in place: its path vector is the tracker's jitter, and a cosine
    with it says nothing (about 0 for any video, the ideal still one included), so it is None and
    the evaluation's path fidelity leaves such pairs out; a moving reference gets the cosine."""
    shrink, left = (track(render(clip(a, "green", "square", 2))) for a in ("shrink", "move_left"))
    jitter = sum(math.hypot(b.x - a.x, b.y - a.y) for a, b in zip(shrink, shrink[1:]))
    assert jitter < metrics.MIN_PATH and not travels(shrink) and travels(left)
    assert path_cosine(left, shrink) is None
    assert path_cosine(shrink, left) == pytest.approx(motion_cosine(shrink, left, 0.0))
    still = Track((shrink[0],) * len(shrink), shrink.height, shrink.width)  # ideal: the object kept in place
    assert motion_cosine(still, shrink, 0.0) == 0.0  # what the cosine with jitter would have given it
    from echoreel_core.toy.evaluate import Outcome, PairResult, format_report, summarise

    def result(action, path):
        seen = Outcome(0.5, path, 1.0, "red", "circle")
        return PairResult(action, "a red circle", "a blue square", ("red", "circle"), ("blue", "square"),
                          seen, seen, seen, "ref.mp4", action)

    report = summarise([result("shrink", None), result("orbit_cw", 0.9), result("orbit_cw", 0.7)])
    assert report["overall"]["with_echoreel"]["path_fidelity"] == pytest.approx(0.8)  # the two that travel
    assert report["overall"]["with_echoreel"]["motion_fidelity"] == pytest.approx(0.5)  # all three
    assert math.isnan(report["per_action"]["shrink"]["with_echoreel"]["path_fidelity"])
    shrink_row = next(line for line in format_report(report).splitlines() if line.startswith("shrink"))
    assert "n/a / n/a" in shrink_row


def test_motion_fidelity_with_missing_detections():
    spec = clip("orbit_ccw", "red", "circle", 4)
    video = render(spec)
    ref = track(video)
    holed = video.clone()
    holed[8] = background(spec).float()
    tr = track(holed)
    assert tr[8] is None
    r = motion_vector(ref)
    kept = torch.ones(3, 15, dtype=torch.bool)
    kept[:, 7:9] = False  # the steps 7->8 and 8->9 have a missing end
    expected = float(r.view(3, 15)[kept].norm() / r.norm())
    assert motion_cosine(tr, ref) == pytest.approx(expected, abs=0.01)
    assert 0 < motion_cosine(tr, ref) < 1
    blank = track(background(spec).float().expand(16, 64, 64, 3))
    assert motion_cosine(blank, ref) == 0.0


def test_content_leakage():
    prompt, reference = ("red", "circle"), {"colour": "blue", "shape": "square"}
    spec = clip("move_left", seed=3)
    videos = {name: track(render(ClipSpec(spec.action, c, s, spec.motion_seed, spec.pattern_seed, spec.look_seed)))
              for name, (c, s) in {"prompt": ("red", "circle"), "colour": ("blue", "circle"),
                                   "shape": ("red", "square"), "both": ("blue", "square"),
                                   "neither": ("green", "triangle")}.items()}
    videos["blank"] = track(background(spec).float().expand(16, 64, 64, 3))
    seen = {k: video_object(v) for k, v in videos.items()}
    assert seen["blank"] is None  # nothing to judge: the evaluation leaves such videos out of the rate
    verdicts = {k: leaked(v, prompt, reference) for k, v in seen.items() if v is not None}
    assert verdicts == {"prompt": (False, False), "colour": (True, False), "shape": (False, True),
                        "both": (True, True), "neither": (False, False)}
    # an attribute the reference shares with the prompt is not leakage
    assert leaked(seen["prompt"], prompt, ("blue", "circle")) == (False, False)
    assert leaked(seen["colour"], prompt, ("blue", "circle")) == (True, False)


def test_evaluation_reports_each_group_of_held_out_actions():
    """summarise() keeps "overall" and "per_action" and adds "groups" (the original three, the new
    motions), each over its own pairs; format_report lists each group's actions, then its row."""
    from echoreel_core.toy.evaluate import Outcome, PairResult, format_report, summarise

    def result(action, cosine):
        seen = Outcome(cosine, cosine, 1.0, "red", "circle")
        return PairResult(action, "a red circle", "a blue square", ("red", "circle"), ("blue", "square"),
                          seen, seen, seen, "ref.mp4", action)

    cosines = {action: k / 10 for k, action in enumerate(DEFAULT_SPLIT.held_out + ("grow",))}
    results = [result(action, c) for action, c in cosines.items() for _ in range(2)]
    report = summarise(results)
    assert set(report) == {"overall", "per_action", "groups"} and set(report["per_action"]) == set(cosines)
    assert list(report["groups"]) == ["original", "new_motions"]
    for name, members in HELD_OUT_GROUPS.items():
        group = report["groups"][name]
        assert group["pairs"] == 2 * len(members)
        mean = sum(cosines[a] for a in members) / len(members)
        assert group["with_echoreel"]["motion_fidelity"] == pytest.approx(mean)
    assert report["overall"]["pairs"] == len(results)
    names = [line.split()[0] for line in format_report(report).splitlines()[1:]]
    assert names == ["orbit_cw", "zigzag", "shrink", "[original]", "accelerate", "arc", "corner", "drift_grow",
                     "[new_motions]", "grow", "overall"]
    only_original = summarise([r for r in results if r.action in HELD_OUT_GROUPS["original"]])
    assert list(only_original["groups"]) == ["original"]  # a group without pairs gets no row
    assert "[new_motions]" not in format_report(only_original)


def test_grids():
    a, b, c = (render(clip(x)) for x in ("move_left", "grow", "zigzag"))
    g = grid(a, b, (c * 255).byte())
    assert g.shape == (16, 64, 3 * 64 + 4, 3) and torch.equal(g[:, :, :64], a)
    assert torch.all(g[:, :, 64:66] == 1)
    still = grid_image(a, b, c, frames=[0, 5, 10, 15])
    assert still.shape == (3 * 64 + 4, 4 * 64 + 6, 3) and torch.equal(still[66:130, 66:130], b[5])
    with pytest.raises(ValueError):
        grid_image(a, b[:8])


def test_tracker_is_colour_space_robust_to_tint_and_brightness():
    spec = clip("orbit_ccw", "magenta", "diamond", 6)
    video = render(spec)
    tinted = (video * 0.85 + torch.tensor([0.05, 0.0, 0.03])).clamp(0, 1)  # darker, slightly tinted
    tr = track(tinted)
    assert detection_rate(tr) == 1.0 and video_object(tr) == ("magenta", "diamond")
    assert motion_cosine(tr, track(video)) > 0.99
    # an object whose hue is far (> 45 degrees) from every candidate colour is not found
    assert detection_rate(metrics.track(video, ("yellow", "green"))) == 0.0
