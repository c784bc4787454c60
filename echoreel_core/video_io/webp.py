"""Animated (and still) WebP, which FFmpeg does not decode: read with Pillow (libwebp).

Frames come out as RGBA at the canvas size, each composed over the ones before as the file
says; they then go through the same converter as FFmpeg's frames (alpha over the background,
squash resizing with FFmpeg's scale filter).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from .timeline import Timeline, average_fps


def _open(path: str):
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow comes with ComfyUI and the pack's requirements
        raise RuntimeError("animated WebP needs Pillow (pip install pillow)") from e
    return Image.open(path)


def scan_webp(path: str) -> Timeline:
    with _open(path) as image:
        count = int(getattr(image, "n_frames", 1))
        durations = []
        for i in range(count):
            image.seek(i)
            durations.append(int(image.info.get("duration", 0) or 0))
    ms = [d if d > 0 else 100 for d in durations]  # a 0 ms frame is shown for 100 ms by browsers
    pts = np.concatenate([[0], np.cumsum(ms[:-1])]).astype(np.int64) if count else np.zeros(0, np.int64)
    nominal = Fraction(1000, int(np.median(ms))) if count else None
    fps = average_fps(pts, Fraction(1, 1000), [nominal])
    variable = len(set(ms[:-1])) > 1
    return Timeline(path, 0, Fraction(1, 1000), pts, np.zeros(0, np.int64), count, fps, variable,
                    False, None, source="webp")


def decode_webp(timeline: Timeline, indices, convert) -> dict:
    """{index: converted frame} for the frame indices asked (Pillow decodes in order)."""
    import av

    out = {}
    with _open(timeline.path) as image:
        for i in sorted(set(indices)):
            image.seek(i)
            rgba = np.asarray(image.convert("RGBA"))
            out[i] = convert(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgba), format="rgba"))
    return out
