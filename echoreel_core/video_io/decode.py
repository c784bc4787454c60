"""Decoding the frames asked for, by presentation time: right by construction on every stream.

For the next frame wanted, decoding starts at the last keyframe shown at or before it (a seek),
and runs in order from there; a decoded frame is recognised by its timestamp, never by counting
from the seek point, so open GOPs (x265's default, x264 open_gop, MPEG-2 with B-frames), whose
pictures after a seek come out in a different number than before it, give the right frames.
Each start is checked: the first packet decoded must be a keyframe the scan listed, shown no later
than the frame wanted; every frame decoded must carry a timestamp the scan listed; every frame
wanted must come out before a later one does. When a check fails (a demuxer that seeks loosely,
a keyframe that is not a clean start), decoding starts at an earlier keyframe; after three
failures, or when timestamps after a seek are not the scan's (MPEG program streams interpolate
them), from the beginning of the file with no seek, which is exact. Frames wanted one after the
other decode in one run; a seek is made only to skip a gap (SEEK_GAP frames or more).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from .timeline import Timeline

SEEK_GAP = 8  # frames: decode through shorter gaps between wanted frames, seek over longer ones
# codecs whose frames no other frame refers to can be dropped undecoded when not wanted (FFmpeg's
# skip_frame "nonref"); not VP8/VP9/AV1, whose hidden frames are shown by later packets
SKIPPABLE = {"h264", "hevc", "mpeg1video", "mpeg2video", "mpeg4", "h263", "vc1", "wmv3"}


def decode_frames(timeline: Timeline, indices, convert, container=None) -> dict:
    """{frame index: convert(frame)} for the sorted, unique frame indices asked; frames that no
    decoding could produce are missing from the result. `container`: one already open on the
    file (the scan's) to start with; it is closed at the end."""
    if timeline.source == "webp":
        from .webp import decode_webp

        return decode_webp(timeline, indices, convert)
    if timeline.pts is None:
        return _decode_counting(timeline, indices, convert, container)
    wanted = {int(timeline.pts[i]): i for i in indices}
    got = _decode_by_time(timeline, sorted(wanted), convert, container)
    return {wanted[p]: frame for p, frame in got.items()}


class _Source:
    """A container opened on the timeline's stream, and the decoder for it: FFmpeg's own, except
    for VP8/VP9 with an alpha channel (WebM `alpha_mode`), which only libvpx decodes with alpha."""

    def __init__(self, timeline: Timeline, container=None):
        import av

        self.container = container if container is not None else av.open(timeline.path)
        self.stream = self.container.streams[timeline.stream_index]
        self.stream.thread_type = "AUTO"
        self.decoder = None
        name = self.stream.codec_context.name
        self.can_skip = name in SKIPPABLE
        if (self.stream.metadata or {}).get("alpha_mode") == "1" and name in ("vp8", "vp9"):
            try:
                self.decoder = av.CodecContext.create("libvpx" if name == "vp8" else "libvpx-vp9", "r")
            except Exception:  # noqa: BLE001 - this FFmpeg has no libvpx decoder: no alpha
                self.decoder = None

    def packets(self):
        return self.container.demux(self.stream)

    def seek(self, timestamp: int) -> None:
        self.container.seek(timestamp, stream=self.stream, backward=True)
        if self.decoder is not None:
            self.decoder.flush_buffers()

    def frames(self, packet, wanted=True, shown=None):
        """The frames one packet gives; a packet the decoder refuses gives none (a damaged one).
        wanted=False lets the decoder drop the packet's frame if no other frame refers to it
        (skip_frame "NONREF": B-frames that are not references), which saves decoding time."""
        import av

        if packet.size and packet.is_corrupt and shown is not None and packet.pts not in shown:
            return []  # the cut-off last packet of a truncated file: the scan left it out too
        context = self.decoder if self.decoder is not None else self.stream.codec_context
        skip = "NONREF" if not wanted and self.can_skip else "DEFAULT"
        if context.skip_frame != skip:
            context.skip_frame = skip
        try:
            if self.decoder is not None:
                return self.decoder.decode(packet if packet.size else None)
            return packet.decode()
        except av.error.FFmpegError:
            return []

    def close(self) -> None:
        self.container.close()


def _decode_counting(timeline: Timeline, indices, convert, container=None) -> dict:
    """Without usable timestamps: the n-th frame out of the decoder, from the start, is frame n."""
    wanted, out, n = set(indices), {}, -1
    if container is not None:  # the scan's: it has read to the end
        container.close()
    source = _Source(timeline)
    try:
        for packet in source.packets():
            for frame in source.frames(packet):
                n += 1
                if n in wanted:
                    out[n] = convert(frame)
                if len(out) == len(wanted):
                    return out
    finally:
        source.close()
    return out


def _decode_by_time(timeline: Timeline, targets: list, convert, container=None) -> dict:
    keys = timeline.keys
    shown, starts = set(timeline.pts.tolist()), set(keys.tolist())
    out = {}
    pos = 0  # targets[pos] is the first one not decoded yet
    avoid = set()  # keyframes whose start failed a check: never seek to them again
    source = _Source(timeline, container)
    try:
        while pos < len(targets):
            k = bisect_right(keys, targets[pos]) - 1
            while k >= 0 and int(keys[k]) in avoid:
                k -= 1
            if k < 0 or len(avoid) > 2 or timeline.notes.get("seek_unreliable"):
                # from the beginning, in a fresh container, decoding through every gap
                source.close()
                source = _Source(timeline)
                _run(timeline, source, None, targets, pos, out, convert, shown, starts, skip=False)
                break  # there is nothing earlier to try
            status, pos = _run(timeline, source, int(keys[k]), targets, pos, out, convert,
                               shown, starts, avoid)
            if status == "done":
                break
            if status == "inconsistent":
                timeline.notes["seek_unreliable"] = True
            elif status in ("late", "missed"):
                avoid.add(int(keys[k]))
    finally:
        source.close()
    return out


def _run(timeline, source, seek_to, targets, pos, out, convert, shown, starts, avoid=(),
         skip=True):
    """Decode from the keyframe at `seek_to` (None: from the start of the file) until every
    target is out ("done"), a long gap makes a seek worth it ("seek"), the landing point is past
    the target ("late"), a target did not come out ("missed") or the timestamps after the seek
    are not the scan's ("inconsistent": a keyframe or a frame with a timestamp the scan never
    saw). Returns (status, pos). Keyframes in `avoid` are never seeked to; skip=False decodes
    through every gap."""
    import av

    keys, pts, wanted = timeline.keys, timeline.pts, set(targets)
    if seek_to is not None:
        try:
            source.seek(seek_to)
        except av.error.FFmpegError:
            return "late", pos
    started = False
    for packet in source.packets():
        key = bool(packet.size) and packet.is_keyframe and packet.pts is not None
        if packet.size and not started:
            if seek_to is None and not len(keys):
                pass  # no keyframe flags at all: decode everything from the start
            elif not key:
                continue  # decoding must begin at a keyframe
            elif seek_to is not None and packet.pts not in starts:
                return "inconsistent", pos
            elif packet.pts > targets[pos]:
                return "late", pos
            started = True
        elif key and skip and packet.pts >= (seek_to or 0):
            # every target before targets[pos] is out: skip to the next target's keyframe when
            # it lies past this keyframe's group and SEEK_GAP frames or more ahead
            k_next = bisect_right(keys, targets[pos]) - 1
            if keys[k_next] > packet.pts and int(keys[k_next]) not in avoid and \
                    bisect_left(pts, keys[k_next]) - bisect_left(pts, packet.pts) >= SEEK_GAP:
                return "seek", pos
        if not started:
            continue
        for frame in source.frames(packet, packet.pts is None or packet.pts in wanted, shown):
            p = frame.pts
            if p is None:
                continue
            if seek_to is not None and p not in shown:
                return "inconsistent", pos
            while pos < len(targets) and p > targets[pos]:
                if targets[pos] not in out:
                    return "missed", pos
                pos += 1
            if pos < len(targets) and p == targets[pos]:
                out[p] = convert(frame)
                pos += 1
            if pos == len(targets):
                return "done", pos
    return ("done" if pos == len(targets) else "missed"), pos
