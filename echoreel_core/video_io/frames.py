"""One decoded frame -> float32 RGB (h, w, 3) in [0, 1]: upright, SDR, opaque, at the asked size.

Squash resizing is FFmpeg's `scale=W:H:flags=bilinear` filter applied before the RGB conversion,
what decord (and so the official loader) does, which gives the same pixels; it is applied in the
stored orientation, then the frame is turned upright. Every other conversion runs through the
same filter at the frame's own size, so the colours of both paths agree.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from . import colour


@dataclass(frozen=True)
class Orientation:
    """How to turn a stored frame upright: transpose first, then flip rows and/or columns.

    Built from the display matrix (the `rotate` tag of older files is read into it by FFmpeg);
    angles that are not a multiple of 90 degrees are rounded to the nearest one.
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @property
    def degrees(self) -> int:
        """The counter-clockwise rotation applied, ignoring any mirroring (0, 90, 180 or 270)."""
        return {(False, False, False): 0, (False, True, True): 180, (True, True, False): 90,
                (True, False, True): 270}.get((self.transpose, self.flip_rows, self.flip_cols), 0)

    @property
    def mirrored(self) -> bool:
        return (self.transpose, self.flip_rows, self.flip_cols) not in (
            (False, False, False), (False, True, True), (True, True, False), (True, False, True))

    def apply(self, image: np.ndarray) -> np.ndarray:
        if self.transpose:
            image = image.transpose(1, 0, 2)
        if self.flip_rows:
            image = image[::-1]
        if self.flip_cols:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)

    def stored_size(self, height: int, width: int) -> tuple[int, int]:
        """The stored (height, width) that becomes (height, width) upright."""
        return (width, height) if self.transpose else (height, width)


UPRIGHT = Orientation()


def orientation_of(frame) -> Orientation:
    """The Orientation of a decoded PyAV frame, from its DISPLAYMATRIX side data.

    FFmpeg's matrix maps a stored point (x, y) (y downwards) to the displayed (a x + c y, b x + d y),
    a, b, c, d being its first two rows' first two entries in 16.16 fixed point.
    """
    try:
        from av.sidedata.sidedata import Type

        data = frame.side_data.get(Type.DISPLAYMATRIX)
    except Exception:  # noqa: BLE001 - no side data support, or none attached
        data = None
    if data is None:
        return UPRIGHT
    m = np.frombuffer(bytes(data), dtype="<i4").astype(np.float64)
    a, b, c, d = m[0], m[1], m[3], m[4]
    angle = np.degrees(np.arctan2(b, a))  # where the x axis goes
    quarter = int(np.round(angle / 90)) % 4
    ax, bx = [(1, 0), (0, 1), (-1, 0), (0, -1)][quarter]
    # the y axis goes to +-(x axis turned a quarter); the sign of the determinant tells which
    det = a * d - b * c
    cy, dy = (-bx, ax) if det >= 0 else (bx, -ax)
    if bx == 0:  # x stays horizontal: flips only
        return Orientation(False, flip_rows=dy < 0, flip_cols=ax < 0)
    # transposed: stored x becomes displayed y (sign bx), stored y becomes displayed x (sign cy)
    return Orientation(True, flip_rows=bx < 0, flip_cols=cy < 0)


def kind_of(frame) -> str:
    """'hdr', 'alpha' or 'sdr': which conversion a frame needs."""
    if int(getattr(frame, "color_trc", 0) or 0) in colour.HDR_TRANSFERS:
        return "hdr"
    fmt = frame.format
    if fmt.name == "pal8":  # GIF: transparent when a pixel uses a palette entry (B, G, R, A) that is
        palette = np.frombuffer(bytes(frame.planes[1]), np.uint8)[: 256 * 4].reshape(-1, 4)
        if (palette[:, 3] == 255).all():
            return "sdr"
        plane = frame.planes[0]
        used = np.frombuffer(bytes(plane), np.uint8).reshape(-1, plane.line_size)[:, : frame.width]
        return "alpha" if (palette[np.unique(used), 3] < 255).any() else "sdr"
    if any(getattr(c, "is_alpha", False) for c in fmt.components):
        return "alpha"
    return "sdr"


def _bits(frame) -> int:
    return max(8, max(c.bits for c in frame.format.components))


class FrameConverter:
    """Converts frames to float32 (h, w, 3) RGB; keeps one FFmpeg filter graph per kind of input.

    size: the upright (height, width) to squash every frame to, or None to keep each frame's own.
    """

    def __init__(self, size=None):
        self.size = size
        self._graphs = {}

    def __call__(self, frame) -> np.ndarray:
        orient = orientation_of(frame)
        kind = kind_of(frame)
        h, w = (frame.height, frame.width) if self.size is None else orient.stored_size(*self.size)
        if kind == "hdr":
            fmt, bits = ("yuv444p", 8) if _bits(frame) <= 8 else ("yuv444p16le", 16)
            planes = self._filter(frame, w, h, fmt).to_ndarray(channel_last=True)  # (h, w, 3)
            rgb = colour.yuv_to_rgb(planes, bits, frame.colorspace,
                                    int(frame.color_range) == colour.RANGE_FULL)
            out = colour.hdr_to_sdr(rgb, int(frame.color_trc), int(frame.color_primaries))
        elif kind == "alpha":
            out = colour.over_background(self._filter(frame, w, h, "rgba").to_ndarray())
        else:
            out = self._filter(frame, w, h, "rgb24").to_ndarray().astype(np.float32) / 255
        return orient.apply(out)

    def _filter(self, frame, width: int, height: int, fmt: str):
        key = (frame.width, frame.height, frame.format.name, int(frame.colorspace),
               int(frame.color_range), width, height, fmt)
        graph = self._graphs.get(key)
        if graph is None:
            import av.filter

            graph = av.filter.Graph()
            args = (f"video_size={frame.width}x{frame.height}:pix_fmt={frame.format.name}"
                    f":time_base=1/1000:pixel_aspect=1/1")
            if int(frame.colorspace) not in (2, 3):  # not unspecified/reserved
                args += f":colorspace={int(frame.colorspace)}"
            if int(frame.color_range):
                args += f":range={int(frame.color_range)}"
            graph.link_nodes(graph.add("buffer", args),
                             graph.add("scale", f"{width}:{height}:flags=bilinear"),
                             graph.add("format", fmt), graph.add("buffersink")).configure()
            self._graphs[key] = graph
        graph.push(frame)
        return graph.pull()
