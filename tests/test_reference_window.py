"""References fitted to the model and previewed honestly (issue 21): the window choice (most
motion, match duration), letterboxing, and Load Reference Video's preview and text, on real mp4s
written with PyAV and read back through PyAV.

The clip used most is still for its first half (a red square resting) and moving for its second
(the square running right 2 pixels a frame), so the window with the most motion is known.
"""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

from echoreel_core.video_io import (
    probe_video,
    read_reference,
    read_video_frames,
    select_frames,
    select_reference,
    write_video,
)
from echoreel_core.video_io.window import duration_stride

FPS, T, STILL = 24, 48, 24  # 2 s at 24 fps; frames 0..23 still, 24..47 moving
MOVING = STILL - 1  # the first start whose every frame pair moves: the square leaves frame 23's place


def still_then_moving(t=T, h=48, w=64) -> torch.Tensor:
    video = torch.full((t, h, w, 3), 0.5)
    for i in range(t):
        x = 4 + 2 * max(0, i - STILL + 1)
        video[i, 16:28, x : x + 10] = torch.tensor([0.9, 0.1, 0.1])
    return video


def flat_picture(h, w, level=0.8) -> torch.Tensor:
    return torch.full((2, h, w, 3), level)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference_window")
    moving = still_then_moving()
    return {"moving": write_video(folder / "still_then_moving.mp4", moving, FPS), "moving_frames": moving,
            "wide": write_video(folder / "wide.mp4", flat_picture(64, 96), FPS),
            "tall": write_video(folder / "tall.mp4", flat_picture(96, 64), FPS), "folder": folder}


def moved(frames: torch.Tensor) -> float:
    """Mean absolute change between consecutive frames."""
    return float((frames[1:] - frames[:-1]).abs().mean())


# the window


def test_most_motion_picks_the_moving_half(videos):
    ref = read_reference(videos["moving"], 4, 4, 0, (32, 32), window="motion")
    # a window with a still pair (starts before 23) moves less than one wholly in the moving half
    assert ref.start >= MOVING and ref.indices == [ref.start + 4 * k for k in range(4)]
    assert ref.searched == (0, T - 1 - 12) and ref.energy > 0
    still = read_reference(videos["moving"], 4, 4, 0, (32, 32))
    assert moved(still.frames) < 0.002 < moved(ref.frames)
    assert ref.times == pytest.approx([i / FPS for i in ref.indices])
    by_time = read_reference(videos["moving"], 4, 4, 0, (32, 32), select="time", window="motion")
    assert by_time.start >= MOVING  # a constant-rate file: the same windows by time
    later = read_reference(videos["moving"], 4, 4, 30, (32, 32), window="motion")
    assert later.start >= 30 and later.searched[0] == 30  # `start` is where the search begins
    in_memory = select_reference(videos["moving_frames"], FPS, 4, 4, 0, (32, 32), window="motion")
    assert in_memory.start >= MOVING and in_memory.times == [i / FPS for i in in_memory.indices]


def test_most_motion_on_a_video_shorter_than_a_window_keeps_the_start(videos):
    with pytest.warns(UserWarning, match="most motion: no window of 16 frames with stride 4"):
        ref = read_reference(videos["moving"], 16, 4, 0, (32, 32), window="motion")
    assert ref.start == 0 and ref.searched is None and ref.repeated == 16 - 12


def test_match_duration_spans_the_duration(videos):
    ref = read_reference(videos["moving"], 8, 4, 0, (32, 32), window="duration", duration=2.0)
    assert ref.stride == 6 and ref.indices == list(range(0, 48, 6))  # 2 s x 24 fps / 8 frames
    assert ref.times == pytest.approx([k * 0.25 for k in range(8)])
    assert ref.covers == pytest.approx(2.0) and ref.repeated == 0
    half = read_reference(videos["moving"], 8, 4, 12, (32, 32), window="duration", duration=1.0)
    assert half.stride == 3 and half.indices[-1] - half.indices[0] == 21 and half.covers == pytest.approx(1.0)
    # rounding: to the nearest stride, halves up, at least 1
    assert [duration_stride(d, 24, n) for d, n in ((0.125, 2), (0.0625, 2), (0.02, 16), (1.1, 8), (1.25, 8))] \
        == [2, 1, 1, 3, 4]
    for duration in (0.5, 0.9, 1.3, 1.7):
        stride = duration_stride(duration, FPS, 8)
        assert abs(8 * stride / FPS - duration) <= 8 * 0.5 / FPS  # half a stride per frame at most
    with pytest.raises(ValueError, match="duration must be a positive number of seconds, got 0"):
        read_reference(videos["moving"], 8, 4, 0, window="duration", duration=0)


# the fit


def test_letterbox_keeps_the_aspect_ratio_with_black_bars(videos):
    for name, bars in (("wide", "rows"), ("tall", "cols")):
        frames, _, _ = read_video_frames(videos[name], 1, 1, size=(64, 64), resize_mode="letterbox")
        picture = frames[0].mean(-1) > 0.4  # the 0.8 grey picture; bars are 0
        rows, cols = picture.any(1).nonzero().flatten(), picture.any(0).nonzero().flatten()
        height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        # 96 x 64 scaled into 64 x 64: 64 x 43 (42.67 rounded), centred, the rest exactly black
        assert (height, width) == ((43, 64) if bars == "rows" else (64, 43))
        first = int(rows[0] if bars == "rows" else cols[0])
        assert first == (64 - 43) // 2
        assert float(frames[0][~picture].abs().max()) == 0.0
        assert float(frames[0][picture].mean()) == pytest.approx(0.8, abs=0.01)
    # frames already decoded letterbox the same way (torch resizing)
    out, _ = select_frames(flat_picture(64, 96), 1, 1, 0, (64, 64), "letterbox")
    assert int((out[0].mean(-1) > 0.4).any(1).sum()) == 43
    cropped, _, _ = read_video_frames(videos["wide"], 1, 1, size=(64, 64), resize_mode="crop")
    assert float(cropped.min()) > 0.7  # crop fills the size: no bars


# the node


@pytest.fixture(scope="module")
def node(videos, tmp_path_factory):
    from comfyui_env import import_pack_in_process

    import_pack_in_process()
    import folder_paths

    folder_paths.set_input_directory(str(videos["folder"]))
    folder_paths.set_temp_directory(str(tmp_path_factory.mktemp("comfy_temp")))
    from comfyui_echoreel_pack.nodes.video import LoadReferenceVideo

    return LoadReferenceVideo


def run(node, video="still_then_moving.mp4", frames=16, stride=4, start=0, width=32, height=32,
        resize="squash (official)", **optional):
    return node.execute(frames=frames, stride=stride, start=start, width=width, height=height, resize=resize,
                        video=video, **optional)


def listed(text: str) -> list[tuple[int, float]]:
    """The (source frame, seconds) pairs of the node's text."""
    return [(int(i), float(s)) for i, s in re.findall(r"(\d+) @ (\d+\.\d+)", text)]


def test_the_defaults_reproduce_todays_frames_bit_exactly(node, videos):
    out = run(node, frames=8, stride=4)
    expected, _, _ = read_video_frames(videos["moving"], 8, 4, 0, (32, 32), "squash")
    assert torch.equal(out[0], expected) and out[1] == 8 and out[2] == FPS
    explicit = run(node, frames=8, stride=4, select="by frame index (official)", window="as set", duration=5.0)
    assert torch.equal(explicit[0], expected)
    crop = run(node, frames=8, stride=4, resize="crop")
    assert torch.equal(crop[0], read_video_frames(videos["moving"], 8, 4, 0, (32, 32), "crop")[0])


def test_the_preview_plays_the_output_frames_and_the_text_names_them(node, videos):
    import folder_paths

    out = run(node, frames=8, width=48, height=32, resize="letterbox", window="match duration", duration=2.0)
    text = out.ui["text"][0]
    assert listed(text) == [(6 * k, 0.25 * k) for k in range(8)]
    assert "window match duration: stride 6, the frames cover 2.000 s" in text
    (image,) = out.ui["images"]
    assert out.ui["animated"] == (True,) and image["type"] == "temp"
    preview = pathlib.Path(folder_paths.get_temp_directory()) / image["subfolder"] / image["filename"]
    shown, info, _ = read_video_frames(preview, 8, 1)  # every frame of the preview, at its own size
    assert info.frame_count == 8 and (info.height, info.width) == (32, 48)
    assert info.fps == pytest.approx(FPS / 6)  # the motion at its real speed
    assert float((shown - out[0]).abs().mean()) < 0.02  # the same frames, through H.264
    # 64x48 fitted into 48x32: a 43x32 picture between black bars of 2 and 3 columns
    assert float(out[0][:, :, :2].abs().max()) == float(out[0][:, :, 45:].abs().max()) == 0.0
    assert float(out[0][:, :, 2:45].min()) > 0.05
    moving = run(node, frames=4, window="most motion")
    pairs = listed(moving.ui["text"][0])
    assert pairs[0][0] >= MOVING and [i for i, _ in pairs] == [pairs[0][0] + 4 * k for k in range(4)]
    assert [s for _, s in pairs] == pytest.approx([i / FPS for i, _ in pairs], abs=5e-4)
    short = run(node, frames=16, stride=4)
    assert "its last frame is repeated for 4 of the 16 frames" in short.ui["text"][0]
    assert listed(short.ui["text"][0])[-4:] == [(47, pytest.approx(47 / FPS, abs=5e-4))] * 4


def test_a_video_made_in_memory_gets_the_same_windows(node, videos):
    from comfy_api.latest import InputImpl, Types

    source = InputImpl.VideoFromComponents(Types.VideoComponents(images=videos["moving_frames"], audio=None,
                                                                 frame_rate=FPS))
    out = run(node, frames=8, source_video=source, window="match duration", duration=1.0)
    assert listed(out.ui["text"][0]) == [(3 * k, round(3 * k / FPS, 3)) for k in range(8)]
    assert torch.equal(out[0], select_frames(videos["moving_frames"], 8, 3, 0, (32, 32), "squash")[0])
    moving = run(node, frames=4, source_video=source, window="most motion")
    assert listed(moving.ui["text"][0])[0][0] >= MOVING
    still = InputImpl.VideoFromComponents(Types.VideoComponents(images=videos["moving_frames"], audio=None,
                                                                frame_rate=0))
    with pytest.raises(ValueError, match="source_video: matching a duration needs the video's frame rate"):
        run(node, frames=8, source_video=still, window="match duration")
