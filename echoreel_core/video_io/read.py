"""Reading reference videos: the frames asked for, exactly, upright, in SDR colours.

EchoReel conditions generation on reference videos. The official data loader reads them with
decord: 16 frames with stride 4 from frame 0 (frames 0, 4, ..., 60), squash-resized (aspect ratio
not kept) to 256x256 by FFmpeg's bilinear scale filter, repeating the last frame when the video
is too short. `read_video_frames` keeps those defaults and those pixels, with one reader, PyAV
(FFmpeg; Pillow for animated WebP), whose frames are right by construction:

- frame i is the i-th frame in display order (timeline.py), found by its timestamp after a seek
  to the keyframe before it (decode.py), so open GOPs and B-frames give the right frames, and
  reading from the end of a long file costs about what reading from its start does. decord,
  which the official loader uses, returns frames from the wrong place on open-GOP streams and is
  not used.
- select="index" (the official default) takes frames start, start+stride, ...; select="time"
  takes the frames on screen at the times those indices have at the video's average frame rate,
  which differs only for variable-frame-rate files. The fps reported is that average rate,
  (frames - 1) / (last - first timestamp), or the container's exact rational when it agrees.
- rotation and mirroring (the display matrix) are applied; HDR (HLG, PQ) is tone mapped to SDR
  BT.709, alpha is composited over black (colour.py); "crop" and "letterbox" honour the pixel
  aspect ratio.
- a truncated file gives its readable frames when they are enough for the request (with a
  warning naming the file and the count), else an error saying it is truncated.
"""

from __future__ import annotations

import os
import threading
import warnings
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from .decode import decode_frames
from .frames import FrameConverter, kind_of, orientation_of
from .timeline import Timeline, file_key, is_webp, scan

# every container the tests decode (tests/test_video_corpus.py); the node lists these
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".webp", ".3gp",
                    ".ts", ".mts", ".m2ts", ".flv", ".mpg", ".mpeg", ".wmv", ".asf", ".mxf")
SELECT_MODES = ("index", "time")
RESIZE_MODES = ("squash", "crop", "letterbox")


class VideoReadError(ValueError):
    """A video could not be read as asked; the message names the file and the numbers involved."""


@dataclass(frozen=True)
class VideoInfo:
    """What probe_video finds. width and height are those of the frames read at native size:
    upright (after rotation), in stored pixels (sample_aspect_ratio says how wide each is)."""

    path: str
    frame_count: int
    fps: float
    width: int
    height: int
    rotation: int = 0                   # degrees counter-clockwise applied to stored frames
    mirrored: bool = False
    sample_aspect_ratio: Fraction = Fraction(1)
    hdr: str = ""                       # "HLG" or "PQ" when tone mapped
    alpha: bool = False                 # the first frame has see-through pixels (composited over black)
    variable_frame_rate: bool = False
    truncated: bool = False
    declared_frames: int | None = None  # what a truncated file declares


_CACHE_SIZE = 32
_cache: OrderedDict = OrderedDict()  # file_key -> (VideoInfo, Timeline, Orientation)
_cache_lock = threading.Lock()


def _reason(e: BaseException) -> str:
    """One short line per failure, without decoder internals (C++ traces, errno numbers)."""
    text = getattr(e, "strerror", None) or str(e)
    lines = str(text).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]


def _inspect(path: str):
    if not os.path.isfile(path):
        raise VideoReadError(f"{path}: no such file")
    key = file_key(path)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    try:
        import av

        if is_webp(path):
            timeline = scan(path)
            first = decode_frames(timeline, [0], lambda frame: frame).get(0)
        else:
            container = av.open(path)
            try:  # one opening for the scan and the first frame: opening probes, which costs
                timeline = scan(path, container)
                first = decode_frames(timeline, [0], lambda frame: frame, container).get(0)
            finally:
                container.close()
    except Exception as e:  # noqa: BLE001 - decoders raise many types; all mean "cannot read"
        raise VideoReadError(f"{path}: not a readable video: {_reason(e)} (a damaged or "
                             f"truncated file, or not a video)") from None
    if first is None:
        raise VideoReadError(f"{path}: not a readable video: no frame decodes (a damaged or "
                             f"truncated file)")
    orient = orientation_of(first)
    kind = kind_of(first)
    if kind == "alpha":  # an alpha channel, but is anything see-through? (GIFs decode to bgra)
        kind = "alpha" if (first.to_ndarray(format="rgba")[..., 3] < 255).any() else "sdr"
    height, width = (first.width, first.height) if orient.transpose else (first.height, first.width)
    from .colour import HDR_TRANSFERS

    info = VideoInfo(path, timeline.count, timeline.fps, width, height, orient.degrees,
                     orient.mirrored, timeline.sample_aspect_ratio,
                     HDR_TRANSFERS.get(int(first.color_trc or 0), "") if kind == "hdr" else "",
                     kind == "alpha", timeline.variable_rate, timeline.truncated,
                     timeline.declared)
    with _cache_lock:
        _cache[key] = (info, timeline, orient)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return info, timeline, orient


def probe_video(path) -> VideoInfo:
    """Frame count, fps, upright size and what the reader does to the frames (rotation, HDR ...)."""
    return _inspect(str(path))[0]


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


def time_indices(timeline: Timeline, num_frames: int, stride: int, start: int):
    """Selection by time: sample k is the frame on screen at (start + k * stride) / fps seconds
    after the first frame, fps being the average rate (a quarter frame of slack absorbs timestamp
    rounding, so a constant-rate file gives exactly frame_indices). A time at or past the end
    (the last frame's timestamp plus one average frame) repeats the last frame, as frame_indices
    does. Returns (indices, repeated)."""
    pts, fps = timeline.pts, timeline.fps
    if pts is None or fps <= 0 or timeline.count < 2:
        return frame_indices(timeline.count, num_frames, stride, start)
    if num_frames < 1 or stride < 1 or start < 0:
        raise ValueError(f"need num_frames >= 1, stride >= 1, start >= 0; "
                         f"got {num_frames}, {stride}, {start}")
    tick = 1 / (fps * float(timeline.time_base))  # timestamps per average frame
    end = int(pts[-1]) + tick
    times = [int(pts[0]) + (start + k * stride) * tick for k in range(num_frames)]
    if times[0] >= end:
        seconds = (end - int(pts[0])) * float(timeline.time_base)
        raise VideoReadError(f"start frame {start} is past the end: the video lasts "
                             f"{seconds:.2f} s, {timeline.count} frames at {fps:.3f} fps")
    stamps = pts.tolist()
    indices = [max(0, bisect_right(stamps, t + tick / 4) - 1) for t in times]
    repeated = sum(t >= end for t in times)
    return [timeline.count - 1 if t >= end else i for t, i in zip(times, indices)], repeated


def _resize(frame: torch.Tensor, size, mode: str, pixel_aspect: float = 1.0) -> torch.Tensor:
    """(H, W, 3) float -> (size[0], size[1], 3). 'crop' scales the displayed picture (each pixel
    pixel_aspect times as wide as tall) to cover the size, then centre crops; 'letterbox' scales
    it to fit inside the size and centres it on black (bars top and bottom, or left and right;
    an odd leftover pixel goes to the bottom/right bar); 'squash' stretches."""
    h, w = size
    x = frame.permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W)
    rh, rw = h, w
    if mode in ("crop", "letterbox"):
        shown_w = x.shape[3] * pixel_aspect
        if mode == "crop":
            scale = max(h / x.shape[2], w / shown_w)
            rh, rw = max(h, round(x.shape[2] * scale)), max(w, round(shown_w * scale))
        else:
            scale = min(h / x.shape[2], w / shown_w)
            rh, rw = min(h, max(1, round(x.shape[2] * scale))), min(w, max(1, round(shown_w * scale)))
    if (rh, rw) != tuple(x.shape[2:]):
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
    if mode == "letterbox":
        top, left = (h - rh) // 2, (w - rw) // 2
        out = torch.zeros(h, w, 3, dtype=x.dtype)
        out[top : top + rh, left : left + rw] = x[0].permute(1, 2, 0).clamp(0, 1)
        return out
    top, left = (rh - h) // 2, (rw - w) // 2
    return x[0, :, top : top + h, left : left + w].permute(1, 2, 0).clamp_(0, 1)


def select_frames(frames: torch.Tensor, num_frames: int = 16, stride: int = 4, start: int = 0, size=None,
                  resize_mode: str = "squash") -> tuple[torch.Tensor, int]:
    """The official selection (start, start+stride, ..., the last frame repeated past the end) and
    resize over frames already decoded, (T, H, W, 3) in [0, 1] (e.g. a ComfyUI VIDEO's images).
    Returns ((num_frames, h, w, 3), repeated). Every mode resizes with torch (bilinear,
    antialiased): only files get FFmpeg's scaler, as in the official loader."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"expected frames (t, h, w, 3), t >= 1; got {tuple(frames.shape)}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be 'squash', 'crop' or 'letterbox', got {resize_mode!r}")
    indices, repeated = frame_indices(frames.shape[0], num_frames, stride, start)
    h, w = tuple(frames.shape[1:3]) if size is None else (int(size[0]), int(size[1]))
    out = torch.stack([_resize(frames[i].float(), (h, w), resize_mode) for i in indices])  # (t, h, w, 3)
    return out, repeated


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_request(num_frames, stride, start, size=None, resize_mode="squash", select="index") -> None:
    """Raise ValueError, naming the argument, for a request read_video_frames cannot take."""
    for name, value, low in (("num_frames", num_frames, 1), ("stride", stride, 1),
                             ("start", start, 0)):
        if not _is_int(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if size is not None and not (isinstance(size, (tuple, list)) and len(size) == 2
                                 and all(_is_int(s) and s >= 1 for s in size)):
        raise ValueError(f"size must be None or (height, width), positive integers; got {size!r}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be 'squash', 'crop' or 'letterbox', got {resize_mode!r}")
    if select not in SELECT_MODES:
        raise ValueError(f"select must be 'index' or 'time', got {select!r}")


def read_video_frames(path, num_frames=16, stride=4, start=0, size=None, resize_mode="squash",
                      max_bytes=2 * 1024**3, select="index"):
    """Read frames start, start+stride, ... as float32 (t, h, w, 3) in [0, 1].

    size is (height, width) or None for native (the first frame's upright size; later frames of
    another size are squashed to it). "squash" ignores the aspect ratio and resizes while
    decoding, exactly as the official loader (FFmpeg's bilinear scale); "crop" scales the
    displayed picture (pixel aspect ratio honoured) with torch (bilinear, antialiased) and centre
    crops; "letterbox" scales it the same way to fit inside the size and pads with black.
    select="index" (official) counts frames, select="time" follows time (see time_indices).
    Returns (frames, info, repeated); repeated > 0 means the video was too short and its last
    frame fills the rest. read_frames_at also says which frames those are.
    """
    frames, info, repeated, _ = read_frames_at(path, num_frames, stride, start, size, resize_mode,
                                               max_bytes, select)
    return frames, info, repeated


def read_frames_at(path, num_frames=16, stride=4, start=0, size=None, resize_mode="squash",
                   max_bytes=2 * 1024**3, select="index"):
    """read_video_frames, plus the source frame index of every output frame (display order,
    counted as timeline.py does): (frames, info, repeated, indices)."""
    check_request(num_frames, stride, start, size, resize_mode, select)
    path = str(path)
    info, timeline, orient = _inspect(path)
    needs = start + (num_frames - 1) * stride + 1
    request = f"{num_frames} frames with stride {stride} from frame {start}" + (
        " by time" if select == "time" else "")
    try:
        if select == "time":
            indices, repeated = time_indices(timeline, num_frames, stride, start)
        else:
            indices, repeated = frame_indices(info.frame_count, num_frames, stride, start)
    except VideoReadError as e:
        if not info.truncated:
            raise VideoReadError(f"{path}: {e}") from None
        indices, repeated = None, num_frames  # start lies past what a truncated file kept
    if info.truncated:
        of = f" of the {info.declared_frames} it declares" if info.declared_frames else ""
        if repeated:
            raise VideoReadError(
                f"{path}: the file is truncated: only {info.frame_count} frames{of} are "
                f"readable, too few for {request}"
                + (f" (needs {needs})" if select == "index" else ""))
        warnings.warn(f"{path}: the file is truncated: {info.frame_count} frames{of} are "
                      f"readable; {request} lie within them", stacklevel=3)
    h, w = (info.height, info.width) if size is None else (int(size[0]), int(size[1]))
    unique = sorted(set(indices))
    # float32 output + decoded frames at native size (float32 in the worst case, crop)
    # + one float32 native frame while resizing
    native = info.height * info.width * 3
    estimate = num_frames * h * w * 3 * 4 + len(unique) * native * 4 + native * 4
    if estimate > max_bytes:
        raise VideoReadError(
            f"{path}: reading {num_frames} frames of {h}x{w} from a {info.height}x{info.width} "
            f"video needs about {estimate / 2**20:.1f} MiB, above the limit of "
            f"{max_bytes / 2**20:.1f} MiB")
    if repeated:
        what = (f"(needs {needs} frames), the video has {info.frame_count}" if select == "index"
                else f"and the video has {info.frame_count} frames at {info.fps:.3f} fps")
        warnings.warn(f"{path}: asked for {request} {what}; repeating the last frame for "
                      f"{repeated} of them", stacklevel=3)

    squash = size is None or resize_mode == "squash"
    convert = FrameConverter((h, w) if squash else None)
    try:
        decoded = decode_frames(timeline, unique, convert)
    except VideoReadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise VideoReadError(f"{path}: could not decode frames {unique[0]}..{unique[-1]}: "
                             f"{_reason(e)}") from None
    missing = [i for i in unique if i not in decoded]
    if missing:
        raise VideoReadError(f"{path}: frame{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(map(str, missing[:8]))} of {info.frame_count} could not "
                             f"be decoded (the file is damaged or truncated there)")
    pixel_aspect = float(info.sample_aspect_ratio)
    if orient.transpose:
        pixel_aspect = 1 / pixel_aspect
    frames = torch.empty(num_frames, h, w, 3)  # (t, h, w, 3)
    first = {}
    for k, i in enumerate(indices):
        if i in first:  # a repeated frame: copy, do not convert again
            frames[k] = frames[first[i]]
            continue
        first[i] = k
        f = torch.from_numpy(decoded[i])  # (H, W, 3) float32
        frames[k] = f if f.shape[:2] == (h, w) else _resize(f, (h, w), resize_mode, pixel_aspect)
    return frames, info, repeated, indices


def frame_times(path, indices) -> list[float]:
    """Each frame's time in seconds after the first frame: from its timestamp, or index / fps
    where the file has no usable timestamps."""
    _, timeline, _ = _inspect(str(path))
    if timeline.pts is None:
        return [i / timeline.fps if timeline.fps > 0 else 0.0 for i in indices]
    first = int(timeline.pts[0])
    return [float((int(timeline.pts[i]) - first) * timeline.time_base) for i in indices]


def _clear_cache():
    """Forget every probed file (tests; files are also told apart by size and change time)."""
    with _cache_lock:
        _cache.clear()


__all__ = ["VIDEO_EXTENSIONS", "SELECT_MODES", "RESIZE_MODES", "VideoReadError", "VideoInfo",
           "probe_video", "frame_indices", "time_indices", "read_video_frames", "read_frames_at",
           "frame_times"]
