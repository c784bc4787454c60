"""Which frames a video holds, in display order, and where decoding may start: read from its
packets alone (one demuxing pass, no decoding), so it costs the same wherever the frames asked for lie.

Frame i of a video is the i-th frame in display (presentation-time) order, counted from the
first keyframe: the timeline lists their timestamps. Packets before the first keyframe, and the
leading pictures of that keyframe (shown before it), are not frames: no decoder can show them
right. Packets flagged corrupt at the very end (the cut-off last packet of a truncated file) or
discard (outside an mp4 edit list) are not frames either. Where timestamps are missing or
repeated, the timeline has none (`pts` is None) and frames are counted in decoding output order
from the start.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np


@dataclass(frozen=True)
class Timeline:
    path: str
    stream_index: int
    time_base: Fraction
    pts: np.ndarray | None   # int64, display order: frame i's timestamp (None: count in order)
    keys: np.ndarray         # int64, sorted: timestamps of the keyframes decoding may start at
    count: int               # readable frames
    fps: float               # frames per second over the whole video (see average_fps)
    variable_rate: bool      # frame durations differ by more than timestamp rounding
    truncated: bool          # the file ends before what it declares, or its last packet is cut
    declared: int | None     # the frame count the file declares, when above `count`
    source: str = "pyav"     # "pyav" (FFmpeg) or "webp" (Pillow, animated WebP)
    sample_aspect_ratio: Fraction = Fraction(1)  # how much wider than tall a stored pixel is
    # what decoding learnt about the file: "seek_unreliable" when timestamps after a seek did
    # not match the scan's (MPEG program streams interpolate them); later reads then never seek
    notes: dict = field(default_factory=dict, compare=False, repr=False)


def video_stream(container):
    """The first video stream that is not a cover picture."""
    from av.stream import Disposition

    for stream in container.streams.video:
        if not stream.disposition & Disposition.attached_pic:
            return stream
    raise RuntimeError("the file holds no video stream")


def average_fps(pts: np.ndarray, time_base: Fraction, rates: list) -> float:
    """(n - 1) / (last - first timestamp): the same number whatever the container says. When one
    of the container's rates (average, guessed, nominal) agrees within 0.5%, that exact rational
    is given; a single frame takes the first rate known."""
    if len(pts) < 2 or pts[-1] <= pts[0]:
        return float(next((r for r in rates if r), 0) or 0)
    fps = (len(pts) - 1) / float((int(pts[-1]) - int(pts[0])) * time_base)
    for rate in rates:
        if rate and abs(float(rate) / fps - 1) < 0.005:
            return float(rate)
    return fps


def _declared_seconds(stream) -> float | None:
    """The stream's own duration: its header's, or Matroska's per-track DURATION tag."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = (stream.metadata or {}).get("DURATION")
    if tag:
        try:
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            return None
    return None


def scan(path: str, container=None) -> Timeline:
    """Demux every packet of the video stream once (no decoding) and build the Timeline.
    `container`: one already open on the file, left open (at its end) for the caller."""
    import av

    if is_webp(path):
        from .webp import scan_webp

        return scan_webp(path)
    with contextlib.nullcontext(container) if container is not None else av.open(path) as container:
        stream = video_stream(container)
        records, corrupt, failed, skipped = [], 0, False, 0  # corrupt: packets since the last good one
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the end-of-stream marker
                    continue
                if packet.is_discard:
                    skipped += 1
                    continue
                records.append((packet.pts, packet.is_keyframe, packet.dts))
                # a damaged packet in the middle still decodes to a frame; at the very end, it
                # is the cut-off last one of a truncated file, dropped below
                corrupt = corrupt + 1 if packet.is_corrupt else 0
        except av.error.FFmpegError:  # the file stops making sense part way: keep what came
            failed = True
        time_base = stream.time_base or Fraction(1, 1000)
        rates = [stream.average_rate, stream.guessed_rate, stream.base_rate]
        declared_frames = int(stream.frames or 0)
        declared_seconds = _declared_seconds(stream)
        index = stream.index
        sar = _sample_aspect_ratio(stream)
    if corrupt:
        records = records[:-corrupt]
    first_key = next((i for i, (_, key, _) in enumerate(records) if key), None)
    if first_key is not None:
        skipped += first_key
        records = records[first_key:]
    pts = keys = None
    if records and all(r[0] is not None for r in records):
        stamps = np.array([r[0] for r in records], dtype=np.int64)
        if first_key is not None:
            first = stamps[0]
            kept = stamps >= first  # leading pictures of the first keyframe are not shown right
            skipped += int((~kept).sum())
            records = [r for r, k in zip(records, kept) if k]
            stamps = stamps[kept]
        if len(np.unique(stamps)) == len(stamps):
            pts = np.sort(stamps)
            keys = np.array(sorted(p for p, key, _ in records if key), dtype=np.int64)
    if keys is None:
        keys = np.zeros(0, dtype=np.int64)
    if not (len(pts) if pts is not None else len(records)):
        raise RuntimeError("no decodable frames")
    count, fps, variable = _rate(pts, len(records), time_base, rates)
    declared = declared_frames if declared_frames > count + skipped else None
    if declared_seconds and fps > 0 and pts is not None and declared is None:
        seen = float((int(pts[-1]) - int(pts[0])) * time_base) + 1 / fps
        if declared_seconds - seen > max(1.0, 0.25 * declared_seconds):
            declared = int(round(declared_seconds * fps))
    truncated = bool(corrupt or failed or declared is not None)
    if truncated and pts is not None:
        # cut off: frames still to come in decoding order have timestamps after the last
        # decoding timestamp seen, so every frame shown up to it is complete; later ones may
        # miss frames shown between them (B-frames) and are dropped
        last_dts = next((r[2] for r in reversed(records) if r[2] is not None), None)
        if last_dts is not None and pts[-1] > last_dts and pts[0] <= last_dts:
            pts, keys = pts[pts <= last_dts], keys[keys <= last_dts]
            count, fps, variable = _rate(pts, len(records), time_base, rates)
            if declared_frames <= count + skipped and declared is not None:  # from the duration
                declared = int(round(declared_seconds * fps))
    return Timeline(path, index, time_base, pts, keys, count, fps, variable, truncated, declared,
                    sample_aspect_ratio=sar)


def _rate(pts, packets: int, time_base: Fraction, rates: list):
    """(frame count, average fps, whether frame durations vary beyond timestamp rounding)."""
    if pts is None:
        return packets, float(next((r for r in rates if r), 0) or 0), False
    steps = np.diff(pts)
    tick = 1 + 0.01 * float(np.median(steps)) if len(steps) else 1
    variable = bool(len(steps) and steps.max() - steps.min() > 2 * tick)
    return len(pts), average_fps(pts, time_base, rates), variable


def _sample_aspect_ratio(stream) -> Fraction:
    """The container's pixel aspect ratio, else the codec's (as FFmpeg guesses it); 1 if none."""
    for sar in (getattr(stream, "sample_aspect_ratio", None),
                getattr(stream.codec_context, "sample_aspect_ratio", None)):
        if sar and sar > 0:
            return Fraction(sar)
    return Fraction(1)


def is_webp(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def file_key(path: str):
    """What identifies one version of a file for caching: its path, size and change time."""
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)
