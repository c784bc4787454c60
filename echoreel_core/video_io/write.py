"""Writing generated videos: mp4 (h264, as the official saver) and gif, always atomically."""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np
import torch

from ..common.files import atomic_write
from .tensors import to_uint8


def _gif_frames(arrays: np.ndarray, rate: Fraction):
    """pal8 frames sharing one palette built from the whole clip; plain rgb8 if that fails.

    The gif encoder takes only paletted input, and swscale's only palette is the fixed 3-3-2 rgb8
    one, which turns greys yellow; FFmpeg's palettegen/paletteuse filters do much better.
    """
    import av
    import av.filter

    def rgb(a):
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24")

    try:
        g = av.filter.Graph()
        src = g.add_buffer(width=arrays.shape[2], height=arrays.shape[1], format="rgb24",
                           time_base=1 / rate)
        split, gen = g.add("split"), g.add("palettegen", "stats_mode=full")
        use, sink = g.add("paletteuse", "dither=none"), g.add("buffersink")
        src.link_to(split)
        split.link_to(gen, 0, 0)
        split.link_to(use, 1, 0)
        gen.link_to(use, 0, 1)
        use.link_to(sink)
        g.configure()
        for i, a in enumerate(arrays):
            f = rgb(a)
            f.pts, f.time_base = i, 1 / rate
            g.push(f)
        g.push(None)  # palettegen emits its palette only at the end of the stream
        return [g.pull() for _ in range(len(arrays))], "pal8"
    except Exception:  # noqa: BLE001 - palette filters missing from this FFmpeg build
        return [rgb(a) for a in arrays], "rgb8"


def write_video(path, frames: torch.Tensor, fps: float) -> str:
    """Write (t, h, w, 3) float [0, 1] or uint8 frames to .mp4 or .gif (chosen by suffix), or
    one frame (t = 1) to .png (8-bit RGB, lossless).

    mp4 is h264 yuv420p at crf 10 like the official saver (mpeg4 at a high bitrate if this PyAV
    has no libx264). yuv420p needs even sizes, so an odd height/width is padded by repeating the
    last row/column: the file is then one pixel larger than the frames. gif delays are whole
    centiseconds, so its fps is approximate. The file is written under a temporary name in the
    same folder and moved into place, so a crash never leaves half a video at `path`.
    """
    import av

    path = str(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".mp4", ".gif", ".png"):
        raise ValueError(f"{path}: unsupported suffix {suffix!r}; use .mp4, .gif or .png")
    if suffix == ".png" and frames.shape[0] != 1:
        raise ValueError(f"{path}: a .png holds one frame; got {frames.shape[0]}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"{path}: expected frames (t, h, w, 3), t >= 1; got {tuple(frames.shape)}")
    if not fps > 0 or not math.isfinite(fps):
        raise ValueError(f"{path}: fps must be a positive number, got {fps!r}")
    if frames.is_floating_point() and not bool(torch.isfinite(frames).all()):
        bad = sorted({int(i) for i in (~torch.isfinite(frames)).flatten(1).any(1).nonzero().flatten()})
        raise ValueError(f"{path}: not written: frames {bad[:8]}{' ...' if len(bad) > 8 else ''} of {frames.shape[0]} "
                         "hold NaN/Inf (they would be written black)")
    arrays = to_uint8(frames.detach().cpu()).numpy()  # (t, h, w, 3) uint8
    rate = Fraction(fps).limit_denominator(1001)

    def encode(tmp) -> None:
        with av.open(str(tmp), "w", format="image2" if suffix == ".png" else suffix[1:]) as container:
            if suffix == ".gif":
                codec, (out, pix_fmt) = "gif", _gif_frames(arrays, rate)
            elif suffix == ".png":
                codec, out, pix_fmt = "png", [av.VideoFrame.from_ndarray(arrays[0], format="rgb24")], "rgb24"
            else:
                codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
                pad = ((0, 0), (0, arrays.shape[1] % 2), (0, arrays.shape[2] % 2), (0, 0))
                padded = np.pad(arrays, pad, mode="edge")  # (t, even h, even w, 3)
                out = [av.VideoFrame.from_ndarray(a, format="rgb24") for a in padded]
                pix_fmt = "yuv420p"
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = out[0].width, out[0].height, pix_fmt
            if codec == "libx264":
                stream.options = {"crf": "10", "threads": "1"}  # one encoder thread: the same bytes every run
            elif codec == "mpeg4":
                stream.bit_rate = max(2_000_000, int(out[0].width * out[0].height * rate * 2))
            for i, f in enumerate(out):
                f.pts, f.time_base = i, 1 / rate
                container.mux(stream.encode(f))
            container.mux(stream.encode())

    # the temporary file gets the usual permissions (not mkstemp's 0600) and ends in the suffix
    atomic_write(path, encode, keep_suffix=True)
    return path
