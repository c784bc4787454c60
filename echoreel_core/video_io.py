"""Reading reference videos and writing generated ones.

EchoReel conditions generation on reference videos. The official data loader reads them with
decord: 16 frames with stride 4 from frame 0 (frames 0, 4, ..., 60), squash-resized (aspect ratio
not kept) to 256x256 by decord itself, repeating the last frame when the video is too short.
`read_video_frames` reproduces that by default. decord is preferred because the official loader
uses it; PyAV is the fallback reader (same pixels: it resizes with the same FFmpeg filter) and the
only writer.

Frames are float32 (t, h, w, 3) in [0, 1], ComfyUI's IMAGE layout; `frames_to_model_input` and
`model_output_to_frames` convert to and from the (b, 3, t, h, w) [-1, 1] layout of the models.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from .files import atomic_write


class VideoReadError(ValueError):
    """A video could not be read as asked; the message names the file and the numbers involved."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    frame_count: int
    fps: float
    width: int
    height: int


def _decord():
    try:  # optional: decord has no wheels for some platforms (e.g. macOS arm64)
        import decord
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        raise RuntimeError(f"decord is not available ({e})") from e
    return decord


def _why(e: BaseException) -> str:
    """One line per decoder failure: decord's messages carry whole C++ stack traces."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def _probe_with_decord(path: str) -> VideoInfo:
    decord = _decord()
    vr = decord.VideoReader(path, ctx=decord.cpu(0))
    h, w = vr[0].shape[:2]  # decord reports the size only by decoding a frame
    return VideoInfo(path, len(vr), float(vr.get_avg_fps()), int(w), int(h))


def _probe_with_pyav(path: str) -> VideoInfo:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise RuntimeError("no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        count = stream.frames
        first = next(container.decode(stream), None)  # proves the stream really decodes
    if first is None:
        raise RuntimeError("no decodable frames")
    if count <= 0:  # webm/gif often do not store it: count packets (demux only, no decoding)
        with av.open(path) as container:
            count = sum(1 for p in container.demux(container.streams.video[0]) if p.size)
    return VideoInfo(path, int(count), float(rate) if rate else 0.0, first.width, first.height)


def probe_video(path) -> VideoInfo:
    """Frame count, fps and native size: decord first (as the official loader), then PyAV."""
    path = str(path)
    if not os.path.isfile(path):
        raise VideoReadError(f"{path}: no such file")
    errors = []
    for name, probe in (("decord", _probe_with_decord), ("PyAV", _probe_with_pyav)):
        try:
            return probe(path)
        except Exception as e:  # noqa: BLE001 - decoders raise many types; all mean "cannot read"
            errors.append(f"{name}: {_why(e)}")
    raise VideoReadError(f"{path}: not a readable video ({'; '.join(errors)})")


def frame_indices(frame_count_available: int, num_frames: int, stride: int, start: int):
    """The official selection start, start+stride, ...; indices past the end become the last one.

    Returns (indices, repeated), repeated counting the padded entries. Raises VideoReadError when
    even `start` is past the end, since then there is no frame to repeat.
    """
    if num_frames < 1 or stride < 1 or start < 0:
        raise ValueError(f"need num_frames >= 1, stride >= 1, start >= 0; "
                         f"got {num_frames}, {stride}, {start}")
    if start >= frame_count_available:
        raise VideoReadError(f"start frame {start} is past the end: "
                             f"the video has {frame_count_available} frames")
    last = frame_count_available - 1
    wanted = [start + i * stride for i in range(num_frames)]
    return [min(i, last) for i in wanted], sum(i > last for i in wanted)


def _read_with_decord(path, indices, width=None, height=None) -> np.ndarray:
    """uint8 (n, h, w, 3) of `indices`; width/height make decord resize, as the official loader."""
    decord = _decord()
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), width=width or -1, height=height or -1)
    return vr.get_batch(list(indices)).asnumpy()


def _read_with_pyav(path, indices, width=None, height=None) -> np.ndarray:
    """uint8 (n, h, w, 3) of `indices`, decoding sequentially (no seeking) up to the last one.

    Sequential decoding is exact for every container and cheap for the short prefixes EchoReel
    reads; unneeded frames are never converted. With width/height, frames go through the FFmpeg
    "scale=W:H" (bilinear, before RGB conversion) that decord uses, which gives the same pixels.
    """
    import av
    import av.filter

    wanted = {i: k for k, i in enumerate(indices)}
    out, n, stop = [None] * len(indices), -1, max(indices)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        graph = None
        if width and height:
            graph = av.filter.Graph()
            graph.link_nodes(graph.add_buffer(template=stream),
                             graph.add("scale", f"{width}:{height}:flags=bilinear"),
                             graph.add("format", "rgb24"), graph.add("buffersink")).configure()
        for n, frame in enumerate(container.decode(stream)):
            if n in wanted:
                if graph is not None:
                    graph.push(frame)
                    frame = graph.pull()
                out[wanted[n]] = frame.to_ndarray(format="rgb24")
            if n >= stop:
                break
    missing = [i for i, a in zip(indices, out) if a is None]
    if missing:
        raise RuntimeError(f"the stream ended before frame {missing[0]} (decoded {n + 1} frames)")
    return np.stack(out)


def _resize(frame: torch.Tensor, size, mode: str) -> torch.Tensor:
    """(H, W, 3) float -> (size[0], size[1], 3); 'crop' scales the short side, centre crops."""
    h, w = size
    x = frame.permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W)
    rh, rw = h, w
    if mode == "crop":
        scale = max(h / x.shape[2], w / x.shape[3])
        rh, rw = max(h, round(x.shape[2] * scale)), max(w, round(x.shape[3] * scale))
    if (rh, rw) != tuple(x.shape[2:]):
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (rh - h) // 2, (rw - w) // 2
    return x[0, :, top : top + h, left : left + w].permute(1, 2, 0).clamp_(0, 1)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def read_video_frames(path, num_frames=16, stride=4, start=0, size=None, resize_mode="squash",
                      max_bytes=2 * 1024**3):
    """Read frames start, start+stride, ... as float32 (t, h, w, 3) in [0, 1].

    size is (height, width) or None for native. "squash" ignores the aspect ratio and resizes
    while decoding, exactly as the official loader (decord's width/height); "crop" scales the
    short side with torch (bilinear, antialiased) and centre crops. Returns (frames, info,
    repeated); repeated > 0 means the video was too short and its last frame fills the rest.
    """
    for name, value, low in (("num_frames", num_frames, 1), ("stride", stride, 1),
                             ("start", start, 0)):
        if not _is_int(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if size is not None and not (isinstance(size, (tuple, list)) and len(size) == 2
                                 and all(_is_int(s) and s >= 1 for s in size)):
        raise ValueError(f"size must be None or (height, width), positive integers; got {size!r}")
    if resize_mode not in ("squash", "crop"):
        raise ValueError(f"resize_mode must be 'squash' or 'crop', got {resize_mode!r}")
    path = str(path)
    info = probe_video(path)
    try:
        indices, repeated = frame_indices(info.frame_count, num_frames, stride, start)
    except VideoReadError as e:
        raise VideoReadError(f"{path}: {e}") from None
    h, w = (info.height, info.width) if size is None else (int(size[0]), int(size[1]))
    unique = sorted(set(indices))
    # float32 output + uint8 decoded frames at native size (the PyAV path's worst case)
    # + one float32 native frame while resizing
    native = info.height * info.width * 3
    estimate = num_frames * h * w * 3 * 4 + len(unique) * native + native * 4
    if estimate > max_bytes:
        raise VideoReadError(
            f"{path}: reading {num_frames} frames of {h}x{w} from a {info.height}x{info.width} "
            f"video needs about {estimate / 2**20:.1f} MiB, above the limit of "
            f"{max_bytes / 2**20:.1f} MiB")
    if repeated:
        warnings.warn(
            f"{path}: asked for {num_frames} frames with stride {stride} from frame {start} "
            f"(needs {start + (num_frames - 1) * stride + 1} frames), the video has "
            f"{info.frame_count}; repeating the last frame for {repeated} of them", stacklevel=2)

    squash = (w, h) if size is not None and resize_mode == "squash" else (None, None)
    try:
        decoded = _read_with_decord(path, unique, *squash)  # (n, h, w, 3) | (n, H, W, 3) uint8
    except Exception as e_decord:  # noqa: BLE001 - fall back to PyAV on any decord failure
        try:
            decoded = _read_with_pyav(path, unique, *squash)
        except Exception as e_av:  # noqa: BLE001
            raise VideoReadError(f"{path}: could not decode frames {unique[0]}..{unique[-1]} "
                                 f"(decord: {_why(e_decord)}; PyAV: {_why(e_av)})") from e_av

    position = {i: k for k, i in enumerate(unique)}
    frames = torch.empty(num_frames, h, w, 3)  # (t, h, w, 3)
    first = {}
    for k, i in enumerate(indices):
        if i in first:  # a repeated last frame: copy, do not resize again
            frames[k] = frames[first[i]]
            continue
        first[i] = k
        f = torch.from_numpy(decoded[position[i]]).float().div_(255)  # (H, W, 3) or (h, w, 3)
        frames[k] = f if f.shape[:2] == (h, w) else _resize(f, (h, w), resize_mode)
    return frames, info, repeated


def select_frames(frames: torch.Tensor, num_frames: int = 16, stride: int = 4, start: int = 0, size=None,
                  resize_mode: str = "squash") -> tuple[torch.Tensor, int]:
    """The official selection (start, start+stride, ..., the last frame repeated past the end) and
    resize over frames already decoded, (T, H, W, 3) in [0, 1] (e.g. a ComfyUI VIDEO's images).
    Returns ((num_frames, h, w, 3), repeated). Both modes resize with torch (bilinear,
    antialiased): only files get FFmpeg's scaler, as in the official loader."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"expected frames (t, h, w, 3), t >= 1; got {tuple(frames.shape)}")
    if resize_mode not in ("squash", "crop"):
        raise ValueError(f"resize_mode must be 'squash' or 'crop', got {resize_mode!r}")
    indices, repeated = frame_indices(frames.shape[0], num_frames, stride, start)
    h, w = tuple(frames.shape[1:3]) if size is None else (int(size[0]), int(size[1]))
    out = torch.stack([_resize(frames[i].float(), (h, w), resize_mode) for i in indices])  # (t, h, w, 3)
    return out, repeated


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
    """Write (t, h, w, 3) float [0, 1] or uint8 frames to .mp4 or .gif (chosen by suffix).

    mp4 is h264 yuv420p at crf 10 like the official saver (mpeg4 at a high bitrate if this PyAV
    has no libx264). yuv420p needs even sizes, so an odd height/width is padded by repeating the
    last row/column: the file is then one pixel larger than the frames. gif delays are whole
    centiseconds, so its fps is approximate. The file is written under a temporary name in the
    same folder and moved into place, so a crash never leaves half a video at `path`.
    """
    import av

    path = str(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"{path}: unsupported suffix {suffix!r}; use .mp4 or .gif")
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
        with av.open(str(tmp), "w", format=suffix[1:]) as container:
            if suffix == ".gif":
                codec, (out, pix_fmt) = "gif", _gif_frames(arrays, rate)
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
