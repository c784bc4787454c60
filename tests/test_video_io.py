"""Tests for echoreel_core.video_io on real files written with PyAV (no mocks).

Synthetic clips encode the frame index as a flat grey level (10 + 10 * index), which survives lossy
h264 coding within a few levels, so decoded frames can be identified exactly. The reader on a
corpus of real-world kinds of file (open GOP, rotation, HDR, ...) is tested in test_video_corpus.py.
decord is made unimportable here: the reader must not need it.
"""

import os
import sys
import warnings

import numpy as np
import pytest
import torch

from echoreel_core.video_io import (
    VideoReadError,
    frame_indices,
    frames_to_model_input,
    model_output_to_frames,
    probe_video,
    read_video_frames,
    stack_side_by_side,
    to_uint8,
    write_video,
)

T, H, W, FPS = 24, 64, 96, 8


@pytest.fixture(autouse=True)
def no_decord(monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` fails, as where not installed


def index_frames(t=T, h=H, w=W):
    """(t, h, w, 3) float frames whose grey level encodes the index."""
    levels = (10 + 10 * torch.arange(t, dtype=torch.float32)) / 255
    return levels.view(t, 1, 1, 1).expand(t, h, w, 3).clone()


def decoded_index(frames):
    """Frame index recovered from the mean grey level of each frame -> list[int]."""
    return [round((float(f.mean()) * 255 - 10) / 10) for f in frames]


def stripes(t=4, h=H, w=W):
    """Red | green | blue vertical thirds: asymmetric enough to see what a crop keeps."""
    f = torch.zeros(t, h, w, 3)
    f[:, :, : w // 3, 0] = 1
    f[:, :, w // 3 : 2 * w // 3, 1] = 1
    f[:, :, 2 * w // 3 :, 2] = 1
    return f


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "clip.mp4", index_frames(), FPS)


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
    """Smooth random texture: resizing and colour conversion differences would show on it."""
    g = torch.Generator().manual_seed(0)
    small = torch.rand(6, 3, 9, 13, generator=g)
    big = torch.nn.functional.interpolate(small, size=(72, 104), mode="bilinear")
    big = big.permute(0, 2, 3, 1)  # (6, 72, 104, 3)
    return write_video(tmp_path_factory.mktemp("v") / "texture.mp4", big, FPS)


def test_write_then_read_back(clip):
    info = probe_video(clip)
    assert (info.frame_count, info.fps, info.width, info.height) == (T, FPS, W, H)
    assert (info.rotation, info.hdr, info.alpha, info.truncated) == (0, "", False, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # long enough: no warning
        frames, info2, repeated = read_video_frames(clip, num_frames=5, stride=4, start=2)
    assert frames.shape == (5, H, W, 3) and frames.dtype == torch.float32
    assert 0 <= frames.min() and frames.max() <= 1
    assert decoded_index(frames) == [2, 6, 10, 14, 18]
    assert repeated == 0 and info2 == info


def test_frame_indices_official_selection():
    assert frame_indices(100, 16, 4, 0) == (list(range(0, 61, 4)), 0)
    assert frame_indices(20, 4, 8, 3) == ([3, 11, 19, 19], 1)
    with pytest.raises(VideoReadError, match="start frame 20"):
        frame_indices(20, 4, 1, 20)
    with pytest.raises(ValueError, match="stride >= 1"):
        frame_indices(20, 4, 0, 0)


def test_short_video_repeats_last_frame(clip):
    msg = r"clip\.mp4.*16 frames with stride 4.*needs 61 frames.*has 24"
    with pytest.warns(UserWarning, match=msg):
        frames, _, repeated = read_video_frames(clip, 16, 4, 0, size=(32, 32))
    assert frames.shape == (16, 32, 32, 3)
    assert repeated == 10
    assert decoded_index(frames) == [0, 4, 8, 12, 16, 20] + [23] * 10
    assert torch.equal(frames[6], frames[15])


def test_start_past_end_names_file(clip):
    with pytest.raises(VideoReadError, match=r"clip\.mp4.*start frame 30.*24 frames"):
        read_video_frames(clip, 4, 1, 30)


def test_corrupt_and_truncated_files(tmp_path, clip):
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    data = open(clip, "rb").read()
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(data[: int(len(data) * 0.3)])  # its index (at the end) is gone
    for path in (bad, cut):
        with pytest.raises(VideoReadError, match=rf"{path.name}: not a readable video") as e:
            read_video_frames(path)
        assert "truncated" in str(e.value) and "decord" not in str(e.value)
        assert "\n" not in str(e.value)
    with pytest.raises(VideoReadError, match="no such file"):
        probe_video(tmp_path / "missing.mp4")


def test_memory_refusal(clip):
    msg = r"clip\.mp4.*needs about [\d.]+ MiB.*limit of 2048\.0 MiB"
    with pytest.raises(VideoReadError, match=msg):
        read_video_frames(clip, 16, 1, 0, size=(20000, 20000))
    with pytest.raises(VideoReadError, match="limit of 0.1 MiB"):
        read_video_frames(clip, 4, 1, 0, max_bytes=100 * 1024)


def test_gif_roundtrip(tmp_path):
    path = write_video(tmp_path / "anim.gif", index_frames(t=12, h=20, w=30), 8)
    info = probe_video(path)
    assert (info.frame_count, info.width, info.height, info.alpha) == (12, 30, 20, False)
    assert info.fps == pytest.approx(8, rel=0.05)  # whole-centisecond delays
    frames, _, _ = read_video_frames(path, 12, 1, 0)
    assert decoded_index(frames) == list(range(12))  # the per-clip palette keeps greys grey
    assert os.listdir(tmp_path) == ["anim.gif"]


def test_odd_size_mp4_and_atomic_write(tmp_path):
    frames = stripes(t=3, h=33, w=47)
    out = tmp_path / "odd.mp4"
    out.write_bytes(b"old")
    assert write_video(out, frames, 7.5) == str(out)
    info = probe_video(out)
    assert (info.width, info.height, info.frame_count) == (48, 34, 3)  # padded to even
    assert info.fps == pytest.approx(7.5)
    back = read_video_frames(out, 1, 1, 0)[0][0, :33, :47]
    assert (back - frames[0]).abs().mean() < 0.05
    assert os.listdir(tmp_path) == ["odd.mp4"]
    before = out.read_bytes()
    with pytest.raises(Exception):
        write_video(out, torch.zeros(2, 0, 8, 3), 8)  # fails after the temporary file opened
    assert out.read_bytes() == before and os.listdir(tmp_path) == ["odd.mp4"]
    with pytest.raises(ValueError, match="unsupported suffix"):
        write_video(tmp_path / "x.avi", frames, 8)


def test_resize_modes(tmp_path):
    path = write_video(tmp_path / "stripes.mp4", stripes(), FPS)  # 64 x 96: R | G | B thirds
    squashed, _, _ = read_video_frames(path, 2, 1, size=(32, 40))
    assert squashed.shape == (2, 32, 40, 3)
    assert squashed[0, 16, 2].argmax() == 0 and squashed[0, 16, 20].argmax() == 1
    assert squashed[0, 16, 37].argmax() == 2
    for size in [(64, 64), (128, 128), (16, 16)]:
        cropped, _, _ = read_video_frames(path, 2, 1, size=size, resize_mode="crop")
        assert cropped.shape == (2, *size, 3)
        # columns 16..80 of 96 survive: a quarter red, a half green, a quarter blue
        s = size[1]
        assert cropped[0, size[0] // 2, 1].argmax() == 0
        assert cropped[0, size[0] // 2, s // 2].argmax() == 1
        assert cropped[0, size[0] // 2, s - 2].argmax() == 2
        green = (cropped[0, size[0] // 2, :, 1] > 0.5).float().mean()
        assert green == pytest.approx(0.5, abs=0.1)


def test_argument_validation(clip):
    for kwargs in [dict(num_frames=0), dict(stride=0), dict(start=-1), dict(size=(0, 8)),
                   dict(size=8), dict(resize_mode="fit"), dict(num_frames=2.5),
                   dict(select="frames")]:
        with pytest.raises(ValueError):
            read_video_frames(clip, **kwargs)


def test_to_uint8_truncates():
    x = torch.tensor([0.999, 1.0, 0.5, -0.2, 1.7, 0.0039])
    assert to_uint8(x).tolist() == [254, 255, 127, 0, 255, 0]
    assert to_uint8(torch.tensor([3], dtype=torch.uint8)).dtype == torch.uint8


def test_model_layout_roundtrip():
    frames = torch.rand(5, 8, 12, 3)
    x = frames_to_model_input(frames)
    assert x.shape == (1, 3, 5, 8, 12) and x.min() >= -1 and x.max() <= 1
    assert torch.allclose(model_output_to_frames(x), frames, atol=1e-6)
    assert torch.allclose(model_output_to_frames(x[0]), frames, atol=1e-6)
    assert model_output_to_frames(x * 3).max() == 1
    with pytest.raises(ValueError):
        model_output_to_frames(torch.zeros(2, 3, 5, 8, 12))


def test_stack_side_by_side():
    a, b = torch.rand(4, 8, 5, 3), torch.rand(4, 8, 7, 3)
    s = stack_side_by_side(a, b, a)
    assert s.shape == (4, 8, 17, 3) and torch.equal(s[:, :, 5:12], b)
    with pytest.raises(ValueError, match="frame count and height"):
        stack_side_by_side(a, torch.rand(3, 8, 5, 3))
    with pytest.raises(ValueError, match="frame count and height"):
        stack_side_by_side(a, torch.rand(4, 9, 5, 3))
