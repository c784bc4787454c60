"""Motion Match (echoreel_core/motion/match.py, nodes/motion_match.py) on toy clips: the same
motion scores ~1, the reverse negative, unrelated motions ~0, and its ranking agrees with the toy
tracker's motion cosine. bench/motion_match.py measures the same on the held-out evaluation."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from echoreel_core.motion.match import (
    MatchSettings,
    MissingOpenCV,
    colour_wheel,
    flow_to_rgb,
    motion_match,
    picture,
    rank_correlation,
)
from echoreel_core.toy import metrics
from echoreel_core.toy.world import ClipSpec, World, render

pytest.importorskip("cv2", reason="Motion Match needs opencv-python-headless (the test extra installs it)")

WORLD = World()


def clip(action: str, colour: str = "red", shape: str = "circle", motion: int = 1, pattern: int = 2,
         look: int = 3) -> torch.Tensor:
    return render(ClipSpec(action, colour, shape, motion, pattern, look), WORLD)


def tracker(reference: torch.Tensor, other: torch.Tensor) -> float:
    return metrics.motion_cosine(metrics.track(other), metrics.track(reference))


def test_identical_videos_score_one_and_a_reversed_motion_scores_negative():
    orbit = clip("orbit_cw")
    match = motion_match(orbit, orbit)
    assert match.score > 0.999 and match.global_score > 0.999 and match.layout_score > 0.999
    # played backwards: the global motion is the opposite; the layout part (where things move when)
    # is less so, as the object is elsewhere at each step
    for action in ("move_right", "back_and_forth"):
        frames = clip(action)
        backwards = motion_match(frames, frames.flip(0))
        assert backwards.global_score < -0.95 and backwards.score < -0.8, action
    right = clip("move_right")
    opposite = motion_match(right, clip("move_left", "blue", "square", look=7))
    assert opposite.global_score < -0.95 and opposite.score < -0.8
    # the same path drawn by another object on another background: the motion, not the look
    assert motion_match(right, clip("move_right", "green", "triangle", look=9)).score > 0.97


@pytest.mark.parametrize("a, b", [("move_right", "move_up"), ("back_and_forth", "up_and_down"),
                                  ("move_down", "shrink"), ("grow", "move_left")])
def test_unrelated_motions_score_near_zero(a, b):
    """Motions the tracker calls orthogonal (cosine ~0): across directions, or a move against a
    size change; different objects and backgrounds."""
    ref, other = clip(a), clip(b, "yellow", "square", motion=5, pattern=6, look=7)
    assert abs(tracker(ref, other)) < 0.05
    assert abs(motion_match(ref, other).score) < 0.1


def test_score_ranks_pairs_as_the_tracker_does():
    """Spearman >= 0.8 on a fixed set: each reference (the held-out actions and three trained ones)
    against another object on its path, on its own speed and place, itself reversed, and another action."""
    pairs = []
    others = {"orbit_cw": "orbit_ccw", "zigzag": "move_up_right", "shrink": "pulse", "move_right": "move_down_right",
              "back_and_forth": "move_left", "pulse": "grow"}
    for i, (action, other) in enumerate(others.items()):
        ref = ClipSpec(action, "red", "circle", 10 + i, 20 + i, 30 + i)
        frames = render(ref, WORLD)
        look = dict(colour="blue", shape="square", look_seed=40 + i)
        pairs += [(frames, render(replace(ref, **look), WORLD)),  # the same path
                  (frames, render(replace(ref, motion_seed=50 + i, **look), WORLD)),  # same pattern, own speed/place
                  (frames, frames.flip(0)),
                  (frames, render(replace(ref, action=other, motion_seed=60 + i, **look), WORLD))]
    tracked = [tracker(a, b) for a, b in pairs]
    scores = [motion_match(a, b).score for a, b in pairs]
    rho = rank_correlation(scores, tracked)
    print(f"Spearman(Motion Match, tracker) over {len(pairs)} toy pairs: {rho:.3f}")
    assert rho >= 0.8


def test_different_frame_counts_and_sizes_compare_on_evenly_spaced_frames():
    spec = ClipSpec("zigzag", "red", "circle", 1, 2, 3)
    ref = render(spec, WORLD)  # 16 frames, 64x64
    dense = render(replace(spec, colour="green"), World(height=96, width=96), n=31)  # the same motion, twice the rate
    match = motion_match(ref, dense, MatchSettings(size=64))
    assert match.frames == 16 and match.reference_frames.shape[1:3] == (64, 64)
    assert match.score > 0.95
    assert "of 16 reference and 31 generated" in match.summary()


def test_still_videos_have_no_motion_to_compare():
    still = clip("move_right")[:1].expand(8, -1, -1, -1)
    assert motion_match(still, clip("move_right")[:8]).score == 0.0
    with pytest.raises(ValueError, match="at least 2 frames"):
        motion_match(still[:1], still)


def test_the_colour_wheel_codes_direction_and_speed():
    rgb = flow_to_rgb(torch.tensor([[2.0, 0.0], [0.0, 0.0], [-2.0, 0.0], [0.5, 0.0]]), scale=1.0)
    assert torch.allclose(rgb[0], torch.tensor([1.0, 0.0, 0.0]))  # right, at full speed: red
    assert torch.allclose(rgb[1], torch.ones(3))  # still: white
    assert torch.allclose(rgb[2], torch.tensor([0.0, 1.0, 1.0]))  # left: cyan
    assert torch.allclose(rgb[3], torch.tensor([1.0, 0.5, 0.5]))  # half speed: half the colour
    wheel = colour_wheel(33)
    assert torch.allclose(wheel[16, 32], torch.tensor([1.0, 0.0, 0.0]), atol=0.1)  # its right rim: red
    assert torch.allclose(wheel[0, 0], torch.ones(3))  # outside the wheel: white


def test_picture_shows_both_flows_side_by_side():
    match = motion_match(clip("move_right"), clip("move_left"), MatchSettings(size=64))
    image = picture(match, steps=3, gap=2)
    assert image.shape == (3 * 66 - 2, 5 * 66 - 2, 3)
    ref_flow, gen_flow = image[:64, 66:130], image[:64, 198:262]
    moving = lambda tile: tile[(tile.min(-1).values < 0.9)]  # noqa: E731: the coloured pixels
    assert moving(ref_flow)[:, 0].mean() > moving(ref_flow)[:, 1:].mean() + 0.2  # rightwards: red
    assert moving(gen_flow)[:, 1:].mean() > moving(gen_flow)[:, 0].mean() + 0.2  # leftwards: cyan


def test_missing_opencv_names_the_package_and_the_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # what an environment without OpenCV gives
    with pytest.raises(MissingOpenCV, match=r"opencv-python-headless.*pip install opencv-python-headless"):
        motion_match(clip("move_right"), clip("move_right"))


def test_the_pack_imports_without_opencv():
    """Only a match imports cv2: the core module (and so the pack) load where it is absent."""
    code = ("import sys; sys.modules['cv2'] = None; import echoreel_core.motion.match as m; "
            "print(m.MatchSettings().size)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(_root()))
    assert done.returncode == 0 and done.stdout.strip() == "128", done.stderr


def _root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


def test_motion_match_node(tmp_path):
    from comfyui_env import import_pack_in_process

    pack = import_pack_in_process()
    import folder_paths

    node = pack.nodes.motion_match.MotionMatch
    assert node in pack.nodes.NODES and node.define_schema().node_id == "EchoReel_MotionMatch"
    old = folder_paths.get_temp_directory()
    folder_paths.set_temp_directory(str(tmp_path))  # where the node's preview goes
    try:
        out = node.execute(reference=clip("orbit_cw"), generated=clip("orbit_cw", "blue", "square", look=8))
        # optional inputs: only the global motion, and one picture row
        other = node.execute(reference=clip("move_right"), generated=clip("move_up"), layout_weight=0.0,
                             preview_steps=1)
    finally:
        folder_paths.set_temp_directory(old)
    score, image = out.args
    assert isinstance(score, float) and score > 0.97
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3
    assert out.ui["text"][0].startswith(f"Motion Match {score:.3f}")
    shown = out.ui["images"][0]
    assert (tmp_path / shown["subfolder"] / shown["filename"]).is_file()
    assert abs(other.args[0]) < 0.1 and other.args[1].shape[1] == 128
