"""What the index records about a video file: its duration, frame rate and size, and a small
picture signature that tells near-duplicates apart from other clips.

The signature: 4 frames spread evenly over the clip (the first, the last and two between), each
squashed to 8x8 RGB by the decoder, minus their common mean, scaled to norm 1 (768 numbers). Two
files of one source (a re-encode, a copy, another cut of the same shot on the same background)
give a cosine near 1; clips of other scenes do not. `pairs` never pairs clips whose signatures'
cosine reaches its duplicate threshold.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..video_io import probe_video, read_video_frames

SIGNATURE_FRAMES = 4
SIGNATURE_SIDE = 8
SIGNATURE_SIZE = SIGNATURE_FRAMES * SIGNATURE_SIDE * SIGNATURE_SIDE * 3


@dataclass(frozen=True)
class Facts:
    frames: int
    fps: float
    width: int
    height: int
    signature: torch.Tensor  # (SIGNATURE_SIZE,) float32, norm 1 (0 for a clip without any variation)

    @property
    def duration(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0


def signature(frames: torch.Tensor) -> torch.Tensor:
    """(SIGNATURE_SIZE,) from (SIGNATURE_FRAMES, 8, 8, 3) frames in [0, 1]."""
    v = frames.reshape(-1).float()
    v = v - v.mean()
    norm = v.norm()
    return v / norm if norm > 1e-6 else torch.zeros_like(v)


def probe_clip(path: str | Path) -> Facts:
    """Facts of one video; raises video_io.VideoReadError for a file that does not decode."""
    info = probe_video(path)
    count = max(1, info.frame_count)
    stride = max(1, (count - 1) // (SIGNATURE_FRAMES - 1))
    with warnings.catch_warnings():  # a clip shorter than 4 frames repeats its last one: fine here
        warnings.simplefilter("ignore")
        frames, _, _ = read_video_frames(path, num_frames=SIGNATURE_FRAMES, stride=stride,
                                         size=(SIGNATURE_SIDE, SIGNATURE_SIDE))
    return Facts(info.frame_count, float(info.fps), info.width, info.height, signature(frames))
