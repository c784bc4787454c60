"""Frames between ComfyUI's IMAGE layout and the models' layout, and the small helpers around them.

Frames are float32 (t, h, w, 3) in [0, 1], ComfyUI's IMAGE layout; the models take and give
(b, 3, t, h, w) in [-1, 1].
"""

from __future__ import annotations

import torch


def frames_to_model_input(frames: torch.Tensor) -> torch.Tensor:
    """(t, h, w, 3) in [0, 1] (or uint8) -> (1, 3, t, h, w) in [-1, 1], as the official loader."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (t, h, w, 3), got shape {tuple(frames.shape)}")
    x = frames.float() / 255 if frames.dtype == torch.uint8 else frames.float()
    return (x * 2 - 1).permute(3, 0, 1, 2).unsqueeze(0).contiguous()


def model_output_to_frames(video: torch.Tensor) -> torch.Tensor:
    """(3, t, h, w) or (1, 3, t, h, w) in [-1, 1] -> (t, h, w, 3) in [0, 1], clamped."""
    if video.ndim == 5 and video.shape[0] == 1:
        video = video[0]
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected (3, t, h, w) or (1, 3, t, h, w), got {tuple(video.shape)}")
    return ((video.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).contiguous()


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8 by truncation (x*255 then cast), as VideoCrafter's saver does."""
    return frames if frames.dtype == torch.uint8 else (frames.float().clamp(0, 1) * 255).byte()


def stack_side_by_side(*videos: torch.Tensor) -> torch.Tensor:
    """(t, h, w_i, 3) videos -> (t, h, sum(w_i), 3), e.g. reference | without | with EchoReel."""
    if not videos:
        raise ValueError("stack_side_by_side needs at least one video")
    shapes = [tuple(v.shape) for v in videos]
    if any(len(s) != 4 or s[-1] != 3 for s in shapes):
        raise ValueError(f"expected videos (t, h, w, 3), got shapes {shapes}")
    if len({s[:2] for s in shapes}) != 1:
        raise ValueError(f"videos must share frame count and height (t, h), got shapes {shapes}")
    if len({v.dtype for v in videos}) != 1:  # mixed uint8/float: join as [0, 1] floats
        videos = [v.float() / 255 if v.dtype == torch.uint8 else v.float() for v in videos]
    return torch.cat(videos, dim=2)
