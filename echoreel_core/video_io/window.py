"""Which window of a video to take, besides setting start and stride by hand: the one that moves
most, or one that spans a duration. Pure arithmetic on indices and small frames; reading the
file is reference.py's job.

A window is the frames start, start+stride, ... that read.py selects (by index or by time).

- most motion: motion energy is the mean, over the window's consecutive frame pairs, of the mean
  absolute difference of their luma (Y = 0.299 R + 0.587 G + 0.114 B, in 0..1), on the frames
  decoded small (MOTION_SIDE pixels on the long side): only how much changes matters, and a small
  decode costs the demuxing and decoding alone. It is the change the Action Prism sees between the
  frames it gets, not between neighbouring frames of the file. Every start whose window lies wholly
  in the video (no repeated last frame) is a candidate; the highest energy wins, ties going to the
  earliest start. A one-frame window is measured by its change to the frame `stride` later. A hard
  cut between shots counts as motion.
- match duration: stride = round(duration x fps / frames), halves rounded up, at least 1. Each
  frame then stands for `stride` source frames, so the frames cover frames x stride / fps seconds
  of the video, within half a stride per frame of the duration asked (the frames' timestamps span
  one stride less: (frames - 1) x stride / fps from the first to the last).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

WINDOWS = ("set", "motion", "duration")
MOTION_SIDE = 64
LUMA = (0.299, 0.587, 0.114)  # BT.601 weights: a measure of change, not a colour conversion
_PAIRS_PER_CHUNK = 4096  # pair differences computed at once: bounds memory on long files


def duration_stride(duration: float, fps: float, num_frames: int) -> int:
    """The stride whose window of num_frames frames covers `duration` seconds at `fps`."""
    if not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
    if not fps > 0:
        raise ValueError(f"matching a duration needs the video's frame rate; got fps {fps!r}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames!r}")
    return max(1, math.floor(duration * fps / num_frames + 0.5))


def motion_size(height: int, width: int, side: int = MOTION_SIDE) -> tuple[int, int]:
    """(h, w) with the long side `side` (never larger than the frame), the aspect ratio kept."""
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def luma(frames) -> np.ndarray:
    """(..., h, w, 3) RGB in 0..1 (numpy or torch) -> (..., h * w) float32 luma."""
    x = frames.detach().float().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames, np.float32)
    y = x[..., 0] * LUMA[0] + x[..., 1] * LUMA[1] + x[..., 2] * LUMA[2]
    return y.reshape(*y.shape[:-2], -1).astype(np.float32, copy=False)


def small_luma(frames: torch.Tensor, side: int = MOTION_SIDE) -> np.ndarray:
    """Frames already decoded, (t, h, w, 3) in 0..1 -> (t, pixels) luma at the motion size
    (torch's bilinear antialiased resize; files are made small by FFmpeg while decoding)."""
    h, w = motion_size(frames.shape[1], frames.shape[2], side)
    x = frames.float().permute(0, 3, 1, 2)
    if (h, w) != tuple(x.shape[2:]):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return luma(x.permute(0, 2, 3, 1))


def measured_frames(num_frames: int) -> int:
    """How many frames of a window the motion measure compares: a one-frame window is measured
    by its change to the next frame of the window."""
    return max(2, num_frames)


def candidate_windows(select, start: int, limit: int) -> list[tuple[int, list[int]]]:
    """[(start, indices)] for every start from `start` on (below `limit`) whose window repeats no
    frame; select(s) gives (indices, repeated) as frame_indices / time_indices do. Repetition only
    grows with the start, so the first window that repeats (or starts past the end) ends the list."""
    out = []
    for s in range(start, limit):
        try:
            indices, repeated = select(s)
        except ValueError:  # VideoReadError: this start lies past the end
            break
        if repeated:
            break
        out.append((s, list(indices)))
    return out


def motion_energies(windows: list[list[int]], frames_luma: np.ndarray, rows: dict) -> np.ndarray:
    """The motion energy of each window (a list of source frame indices); frames_luma[rows[i]] is
    frame i's small luma. Each distinct pair of frames is differenced once."""
    pairs = sorted({(a, b) for w in windows for a, b in zip(w[:-1], w[1:])})
    energy = {}
    for c in range(0, len(pairs), _PAIRS_PER_CHUNK):
        chunk = pairs[c : c + _PAIRS_PER_CHUNK]
        a = frames_luma[[rows[p[0]] for p in chunk]]
        b = frames_luma[[rows[p[1]] for p in chunk]]
        energy.update(zip(chunk, np.abs(a - b).mean(axis=1).tolist()))
    return np.array([np.mean([energy[p] for p in zip(w[:-1], w[1:])]) for w in windows], dtype=np.float64)


def most_motion(windows: list[list[int]], frames_luma: np.ndarray, rows: dict) -> tuple[int, np.ndarray]:
    """(position of the window with the highest motion energy, the earliest on ties; every energy)."""
    if not windows:
        raise ValueError("most_motion needs at least one candidate window")
    energies = motion_energies(windows, frames_luma, rows)
    return int(np.argmax(energies)), energies
