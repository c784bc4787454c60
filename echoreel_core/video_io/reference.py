"""A reference clip as the Action Prism will get it, and what it is: the window chosen (as set, the
most motion, or a duration; window.py says how), the frames read and fitted to the model's size
(read.py), and which source frames and times they are, so that a preview can say so.

`read_reference` reads a file, `select_reference` frames already decoded (a ComfyUI VIDEO made in
memory). With window="set" they give exactly read_video_frames' / select_frames' frames.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .decode import decode_frames
from .frames import FrameConverter
from .read import (
    VideoInfo,
    VideoReadError,
    _inspect,
    check_request,
    frame_indices,
    frame_times,
    read_frames_at,
    select_frames,
    time_indices,
)
from .window import (
    WINDOWS,
    candidate_windows,
    duration_stride,
    luma,
    measured_frames,
    most_motion,
    motion_size,
    small_luma,
)

_LUMA_CHUNK = 64  # in-memory frames made small at once


@dataclass(frozen=True)
class Reference:
    frames: torch.Tensor       # (t, h, w, 3) in [0, 1], at the asked size
    indices: list[int]         # the source frame of each output frame
    times: list[float]         # its time in seconds after the first frame of the video
    start: int                 # the window's start (chosen, for most motion)
    stride: int                # the window's stride (chosen, for match duration)
    fps: float                 # the video's average frame rate
    repeated: int              # output frames that repeat the last frame (video too short)
    window: str                # "set", "motion" or "duration"
    energy: float | None = None             # most motion: the chosen window's motion energy
    searched: tuple[int, int] | None = None  # most motion: the first and last start compared
    info: VideoInfo | None = None           # files only

    @property
    def covers(self) -> float | None:
        """Seconds of video the frames stand for: frames x stride / fps."""
        return len(self.indices) * self.stride / self.fps if self.fps > 0 else None


def _check_window(window: str) -> None:
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(map(repr, WINDOWS))}, got {window!r}")


def read_reference(path, num_frames=16, stride=4, start=0, size=None, resize_mode="squash",
                   select="index", window="set", duration=2.0, max_bytes=2 * 1024**3) -> Reference:
    """The frames read_video_frames gives for the window chosen, and which they are.

    window="set": start and stride as given. "motion": the start, at or after `start`, whose
    window has the most motion (window.py); a video shorter than one window keeps `start` (a
    warning says so). "duration": the stride that makes the frames cover `duration` seconds;
    a window that then runs past the end repeats the last frame, as any window does.
    """
    check_request(num_frames, stride, start, size, resize_mode, select)
    _check_window(window)
    path = str(path)
    info, timeline, _ = _inspect(path)
    energy = searched = None
    if window == "duration":
        try:
            stride = duration_stride(duration, info.fps, num_frames)
        except ValueError as e:
            raise VideoReadError(f"{path}: {e}") from None
    elif window == "motion":
        n = measured_frames(num_frames)
        if select == "time":
            def pick(s):
                return time_indices(timeline, n, stride, s)
        else:
            def pick(s):
                return frame_indices(info.frame_count, n, stride, s)
        windows = candidate_windows(pick, start, info.frame_count)
        if windows:
            rows, frames_luma = _file_luma(path, timeline, info, sorted({i for _, w in windows for i in w}), max_bytes)
            best, energies = most_motion([w for _, w in windows], frames_luma, rows)
            start, energy, searched = windows[best][0], float(energies[best]), (windows[0][0], windows[-1][0])
        else:
            warnings.warn(f"{path}: most motion: no window of {n} frames with stride {stride} from frame {start} "
                          f"lies within the video's {info.frame_count} frames; start {start} kept", stacklevel=2)
    frames, info, repeated, indices = read_frames_at(path, num_frames, stride, start, size, resize_mode,
                                                     max_bytes, select)
    return Reference(frames, list(indices), frame_times(path, indices), start, stride, float(info.fps), repeated,
                     window, energy, searched, info)


def _file_luma(path, timeline, info, indices, max_bytes):
    """({frame index: row}, (frames, pixels) luma) of the frames asked, decoded small: FFmpeg's
    bilinear scale to the motion size while decoding, as squash reading does."""
    h, w = motion_size(info.height, info.width)
    estimate = len(indices) * h * w * 4
    if estimate > max_bytes:
        raise VideoReadError(f"{path}: most motion compares {len(indices)} frames of {h}x{w}, about "
                             f"{estimate / 2**20:.1f} MiB, above the limit of {max_bytes / 2**20:.1f} MiB")
    convert = FrameConverter((h, w))
    decoded = decode_frames(timeline, indices, lambda frame: luma(convert(frame)))
    missing = [i for i in indices if i not in decoded]
    if missing:
        raise VideoReadError(f"{path}: most motion: frame{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(map(str, missing[:8]))} of {info.frame_count} could not be decoded")
    return {i: k for k, i in enumerate(indices)}, np.stack([decoded[i] for i in indices])


def select_reference(frames: torch.Tensor, fps: float, num_frames=16, stride=4, start=0, size=None,
                     resize_mode="squash", window="set", duration=2.0) -> Reference:
    """read_reference over frames already decoded, (T, H, W, 3) in [0, 1], at `fps`: selection by
    index, resizing as select_frames (torch); frame i's time is i / fps."""
    check_request(num_frames, stride, start, size, resize_mode)
    _check_window(window)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"expected frames (t, h, w, 3), t >= 1; got {tuple(frames.shape)}")
    count, fps = frames.shape[0], float(fps)
    energy = searched = None
    if window == "duration":
        stride = duration_stride(duration, fps, num_frames)
    elif window == "motion":
        n = measured_frames(num_frames)
        windows = candidate_windows(lambda s: frame_indices(count, n, stride, s), start, count)
        if windows:
            frames_luma = np.concatenate([small_luma(frames[c : c + _LUMA_CHUNK])
                                          for c in range(0, count, _LUMA_CHUNK)])
            best, energies = most_motion([w for _, w in windows], frames_luma, {i: i for i in range(count)})
            start, energy, searched = windows[best][0], float(energies[best]), (windows[0][0], windows[-1][0])
        else:
            warnings.warn(f"most motion: no window of {n} frames with stride {stride} from frame {start} lies "
                          f"within the video's {count} frames; start {start} kept", stacklevel=2)
    pixels, repeated = select_frames(frames, num_frames, stride, start, size, resize_mode)
    indices, _ = frame_indices(count, num_frames, stride, start)
    times = [i / fps if fps > 0 else 0.0 for i in indices]
    return Reference(pixels, indices, times, start, stride, fps, repeated, window, energy, searched)
