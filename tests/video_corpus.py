"""Small test videos written in the test run with PyAV's own encoders (libx264, libx265,
mpeg2video, libvpx, SVT-AV1, ProRes, MJPEG, gif, libwebp ... bundled in the PyAV wheel: nothing
downloaded, nothing committed). Every frame carries its index as a pattern, so a decoded frame
tells which source frame it is and whether it is upright.

The pattern is a grid of 8 x 6 cells: rows 0-3 hold 16 index bits and their 16 complements as
dark/light cells, row 5 a red cell at the left end and a blue one at the right end, the rest is
mid grey. It survives lossy coding, 4:2:0 chroma and any resize down to about 16x12.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import av
import numpy as np

GREY, DARK, LIGHT = 128, 24, 232
RED, BLUE = (220, 30, 30), (30, 30, 220)


def pattern(index: int, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 (height, width, 3): the index pattern, upright."""
    rows = np.minimum(np.arange(height) * 6 // height, 5)
    cols = np.minimum(np.arange(width) * 8 // width, 7)
    cells = np.full((6, 8, 3), GREY, np.uint8)
    bits = [(index >> b) & 1 for b in range(16)]
    for k, bit in enumerate(bits + [1 - b for b in bits]):
        cells[k // 8, k % 8] = LIGHT if bit else DARK
    cells[5, 0], cells[5, 7] = RED, BLUE
    return cells[rows][:, cols]


def read_index(frame) -> int | None:
    """The index a decoded frame (h, w, 3), float in [0, 1] or uint8, carries; None when the
    pattern is not there upright (turned, mirrored, wrong colours or not a pattern frame)."""
    a = np.asarray(frame, dtype=np.float32)
    if a.max() <= 1.0 + 1e-6:
        a = a * 255
    h, w = a.shape[:2]

    def cell(r, c):
        y0, y1 = int((r + 0.3) * h / 6), int((r + 0.7) * h / 6)
        x0, x1 = int((c + 0.3) * w / 8), int((c + 0.7) * w / 8)
        return a[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)].reshape(-1, 3).mean(0)

    bits = [int(cell(k // 8, k % 8).mean() > GREY) for k in range(32)]
    if any(bits[k] == bits[k + 16] for k in range(16)):
        return None
    red, blue = cell(5, 0), cell(5, 7)
    if not (red[0] > 150 > red[2] and blue[2] > 150 > blue[0]):
        return None
    return sum(b << k for k, b in enumerate(bits[:16]))


def write_clip(path, frames, codec="libx264", rate=30, pix_fmt="yuv420p", fmt=None, options=None,
               container_options=None, pts=None, time_base=None, rotation=None, hflip=False,
               sar=None, colour=None, frame_format="rgb24"):
    """Encode `frames` (uint8 arrays in frame_format) to `path`; returns str(path).

    pts/time_base: explicit timestamps (variable frame rate); rotation: a display matrix turning
    the stored frames `rotation` degrees counter-clockwise for display (PyAV's convention, the
    one VideoFrame.rotation reads back); sar: the sample aspect ratio; colour: frame and stream
    colour tags (colorspace, color_range, color_trc, color_primaries as FFmpeg numbers).
    """
    frames = iter(frames)
    first = next(frames)
    frames = itertools.chain([first], frames)  # streamed: a long clip is never held whole
    height, width = first.shape[:2] if frame_format in ("rgb24", "rgba", "argb") else (
        first.shape[0] * 2 // 3, first.shape[1])
    tb = time_base or Fraction(1, rate)
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if options:
            stream.options = options
        if time_base:
            stream.codec_context.time_base = time_base
            stream.time_base = time_base
        if rotation is not None or hflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip)
        if sar:
            stream.codec_context.sample_aspect_ratio = Fraction(sar)
        for name, value in (colour or {}).items():
            setattr(stream.codec_context, name, value)
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=frame_format)
            if frame.format.name != pix_fmt:
                frame = frame.reformat(format=pix_fmt)
            for name, value in (colour or {}).items():
                setattr(frame, name, value)
            frame.pts = pts[i] if pts is not None else i
            frame.time_base = tb
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


def pattern_clip(path, count, codec="libx264", height=48, width=64, rotation=None, **kw):
    """A clip whose frame i shows pattern(i) upright once displayed (stored turned back by
    `rotation` when given)."""
    turn = (rotation or 0) // 90
    frames = (np.rot90(pattern(i, height, width), -turn) for i in range(count))
    return write_clip(path, frames, codec, rotation=rotation, **kw)


def indices_of(frames) -> list:
    return [read_index(f) for f in frames]


# --- colour ---------------------------------------------------------------------------------
# Kr, Kb: BT.709, BT.601 and BT.2020, the reference matrices the tests check the reader against
KR_KB = {"bt709": (0.2126, 0.0722), "bt601": (0.299, 0.114), "bt2020": (0.2627, 0.0593)}


def rgb_to_ycbcr(rgb, matrix: str, bits: int = 8, full_range: bool = False) -> np.ndarray:
    """Non-linear R'G'B' in [0, 1] (..., 3) -> integer Y'CbCr code values (..., 3)."""
    kr, kb = KR_KB[matrix]
    rgb = np.asarray(rgb, np.float64)
    y = kr * rgb[..., 0] + (1 - kr - kb) * rgb[..., 1] + kb * rgb[..., 2]
    cb = (rgb[..., 2] - y) / (2 * (1 - kb))
    cr = (rgb[..., 0] - y) / (2 * (1 - kr))
    s = 2 ** (bits - 8)
    if full_range:
        top = 2**bits - 1
        out = np.stack([y * top, cb * top + 128 * s, cr * top + 128 * s], -1)
    else:
        out = np.stack([16 * s + 219 * s * y, 128 * s + 224 * s * cb, 128 * s + 224 * s * cr], -1)
    return np.clip(np.round(out), 0, 2**bits - 1).astype(np.uint16 if bits > 8 else np.uint8)


def patch_frame(ycbcr_patches, cell: int = 16, columns: int = 4) -> np.ndarray:
    """Planar 4:2:0 frame (h * 3 / 2, w) from a list of Y'CbCr triples, one cell x cell patch
    each (cell even, so every chroma sample lies inside one patch)."""
    rows = -(-len(ycbcr_patches) // columns)
    h, w = rows * cell, columns * cell
    dtype = np.asarray(ycbcr_patches).dtype
    y = np.zeros((h, w), dtype)
    u = np.zeros((h // 2, w // 2), dtype)
    v = np.zeros((h // 2, w // 2), dtype)
    for k, (yy, cb, cr) in enumerate(ycbcr_patches):
        r, c = divmod(k, columns)
        y[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = yy
        u[r * cell // 2 : (r + 1) * cell // 2, c * cell // 2 : (c + 1) * cell // 2] = cb
        v[r * cell // 2 : (r + 1) * cell // 2, c * cell // 2 : (c + 1) * cell // 2] = cr
    return np.concatenate([y, u.reshape(-1, w), v.reshape(-1, w)], axis=0)


def patch_means(frame, count: int, cell: int = 16, columns: int = 4) -> np.ndarray:
    """Mean colour of the inner half of each patch of a decoded frame (h, w, 3), in 0..255."""
    a = np.asarray(frame, np.float64)
    a = a * 255 if a.max() <= 1.0 + 1e-6 else a
    out = []
    for k in range(count):
        r, c = divmod(k, columns)
        q = cell // 4
        out.append(a[r * cell + q : (r + 1) * cell - q, c * cell + q : (c + 1) * cell - q]
                   .reshape(-1, 3).mean(0))
    return np.array(out)


# --- HDR references (ITU-R BT.2100, BT.2087, BT.2408), independent of the reader's code -----
BT709_TO_BT2020 = np.array([[0.6274, 0.3293, 0.0433],
                            [0.0691, 0.9195, 0.0114],
                            [0.0164, 0.0880, 0.8956]])


def sdr_to_hlg(sdr, reference_white=203.0, peak=1000.0):
    """SDR BT.709 R'G'B' (BT.1886 gamma 2.4) -> HLG BT.2020 R'G'B' showing the same light, with
    SDR white at the HDR reference white (exact for colours below the reader's roll-off knee)."""
    light = np.power(np.asarray(sdr, np.float64), 2.4) @ BT709_TO_BT2020.T * reference_white
    # inverse HLG OOTF (gamma 1.2): display Y_D = peak * Y_s ** 1.2
    yd = light @ np.array([0.2627, 0.6780, 0.0593])
    ys = np.power(np.maximum(yd / peak, 1e-12), 1 / 1.2)
    scene = light / peak * (ys / np.maximum(yd / peak, 1e-12))[..., None]
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    scene = np.clip(scene, 0, 1)
    return np.where(scene <= 1 / 12, np.sqrt(3 * scene), a * np.log(np.maximum(12 * scene - b, 1e-12)) + c)


def sdr_to_pq(sdr, reference_white=203.0):
    light = np.power(np.asarray(sdr, np.float64), 2.4) @ BT709_TO_BT2020.T * reference_white
    y = np.clip(light / 10000, 0, 1)
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    p = np.power(y, m1)
    return np.power((c1 + c2 * p) / (1 + c3 * p), m2)
