"""The table of cases for the reader, before and after: each kind of file the issue names, made
here with PyAV's encoders (tests/video_corpus.py: every frame carries its index), read by the
reader of an earlier commit (through decord and through its PyAV fallback) and by today's.

    .venv/bin/python bench/video_cases.py                  # against the last single-file reader
    .venv/bin/python bench/video_cases.py --before <rev>

Prints a markdown table: the frames each reader returned (right, or the indices it gave), the
orientation, the colour error, the fps it reported, or its error message.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from echoreel_core.video_io import read_video_frames, write_video  # noqa: E402
from echoreel_core.video_io.read import _clear_cache  # noqa: E402
from video_corpus import (  # noqa: E402
    patch_frame,
    patch_means,
    pattern,
    pattern_clip,
    read_index,
    rgb_to_ycbcr,
    sdr_to_hlg,
    sdr_to_pq,
    write_clip,
)
from video_read import load_before  # noqa: E402

SDR = np.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.15, 0.2, 0.85], [0.5, 0.5, 0.5],
                [0.9, 0.7, 0.55], [0.05, 0.05, 0.05], [0.95, 0.95, 0.2], [0.3, 0.1, 0.6]])
HDR = np.array([[0.5, 0.5, 0.5], [0.7, 0.2, 0.1], [0.2, 0.6, 0.3], [0.1, 0.2, 0.7],
                [0.8, 0.6, 0.5], [0.3, 0.3, 0.3], [0.9, 0.9, 0.9], [1.0, 1.0, 1.0]])


def frames_cell(frames, wanted):
    got = [read_index(f) for f in frames.numpy()]
    if got == wanted:
        return "right"
    turned = [read_index(np.rot90(f, k)) for f in frames.numpy() for k in (1, 2, 3)]
    if all(g is None for g in got) and any(t is not None for t in turned):
        return "turned (sideways or upside down)"
    bad = sum(g != w for g, w in zip(got, wanted))
    shown = ", ".join("?" if g is None else str(g) for g in got[:6])
    return f"WRONG {bad}/{len(wanted)}: {shown}, ..."


def build_cases(d: Path):
    """(name, path, read kwargs, how to judge the frames)."""
    cases = []

    def frames_case(name, path, n, stride, start, **kw):
        wanted = [start + k * stride for k in range(n)]
        cases.append((name, path, dict(num_frames=n, stride=stride, start=start, **kw),
                      lambda frames, info: frames_cell(frames, wanted)))

    x265 = pattern_clip(d / "x265.mkv", 400, "libx265", options={"x265-params": "keyint=30:log-level=error"})
    frames_case("HEVC, x265 defaults (open GOP), keyframes every 30: start 240, stride 4", x265, 16, 4, 240)
    frames_case("same file, default selection (0, 4, ... 60)", x265, 16, 4, 0)
    x265d = pattern_clip(d / "x265_default_gop.mkv", 400, "libx265", options={"x265-params": "log-level=error"})
    frames_case("HEVC, x265 defaults (keyint 250): start 240, stride 4", x265d, 16, 4, 240)
    frames_case("H.264, x264 open_gop: start 240", pattern_clip(
        d / "x264_open.mp4", 400, options={"x264-params": "open-gop=1:keyint=30"}), 16, 4, 240)
    frames_case("MPEG-2 with B-frames (.mpg): start 240", pattern_clip(
        d / "mpeg2.mpg", 400, "mpeg2video", fmt="mpeg", options={"g": "15", "bf": "2"}), 16, 4, 240)
    frames_case("MPEG-2 with B-frames (.mxf, XDCAM-like): start 240", pattern_clip(
        d / "mpeg2.mxf", 400, "mpeg2video", fmt="mxf", rate=25, options={"g": "12", "bf": "2"}), 16, 4, 240)
    frames_case("H.264 closed GOP (ordinary): start 240", pattern_clip(d / "plain.mp4", 400), 16, 4, 240)
    for deg in (90, 180, 270):
        frames_case(f"rotation {deg} (display matrix)", pattern_clip(d / f"rot{deg}.mp4", 40, rotation=deg), 8, 4, 0)

    def colour_case(name, path, reference, **kw):
        def judge(frames, info):
            means = patch_means(frames[0], len(reference))
            if name.startswith(("HLG", "PQ")):  # the last patch is reference white
                err = np.abs(means[:-1] - reference[:-1] * 255)
                return f"max error {err.max():.0f}/255, white {means[-1].mean():.0f}/255"
            return f"max error {np.abs(means - reference * 255).max():.0f}/255"
        cases.append((name, path, dict(num_frames=1, stride=1, start=0, **kw), judge))

    for tag, (matrix, full, tags) in {
        "BT.709 limited": ("bt709", False, dict(colorspace=1, color_range=1, color_primaries=1, color_trc=1)),
        "BT.601 limited": ("bt601", False, dict(colorspace=6, color_range=1, color_primaries=6, color_trc=6)),
        "BT.709 full range": ("bt709", True, dict(colorspace=1, color_range=2, color_primaries=1, color_trc=1)),
    }.items():
        fmt = "yuvj420p" if full else "yuv420p"
        frame = patch_frame([tuple(c) for c in rgb_to_ycbcr(SDR, matrix, 8, full)])
        colour_case(f"SDR {tag} colour patches", write_clip(
            d / f"{matrix}{full}.mp4", [frame] * 2, frame_format=fmt, pix_fmt=fmt, options={"qp": "0"},
            colour=tags), SDR)
    for transfer, trc, fn, name in (("HLG", 18, sdr_to_hlg, "arib-std-b67"), ("PQ", 16, sdr_to_pq, "smpte2084")):
        frame = patch_frame([tuple(c) for c in rgb_to_ycbcr(fn(HDR), "bt2020", bits=10)])
        colour_case(f"{transfer} 10-bit BT.2020 (iPhone-like), patches below white", write_clip(
            d / f"{transfer}.mkv", [frame] * 2, "libx265", pix_fmt="yuv420p10le", frame_format="yuv420p10le",
            options={"x265-params": f"lossless=1:log-level=error:colorprim=bt2020:transfer={name}:colormatrix=bt2020nc"},
            colour=dict(color_primaries=9, color_trc=trc, colorspace=9, color_range=1)), HDR)

    gaps = [33] * 20 + [100] * 10 + [17] * 20 + [50] * 10
    pts = np.concatenate([[0], np.cumsum(gaps)]).tolist()
    vfr = pattern_clip(d / "vfr.mp4", len(pts), pts=pts, time_base=Fraction(1, 1000))
    cases.append(("VFR (30/10/60/20 fps sections): fps reported", vfr, dict(num_frames=4, stride=1, start=0),
                  lambda frames, info: f"{info.fps:.2f} fps (average {(len(pts) - 1) / (pts[-1] / 1000):.2f})"))
    ok_time = [int(np.searchsorted(pts, (6 * k) / 24.0 * 1000 + 250 / 24, side="right") - 1) for k in range(8)]
    cases.append(("VFR, select by time (8 frames, stride 6)", vfr, dict(num_frames=8, stride=6, start=0, select="time"),
                  lambda frames, info: frames_cell(frames, ok_time)))

    whole = pattern_clip(d / "whole.mp4", 120, container_options={"movflags": "+faststart"})
    data = Path(whole).read_bytes()
    cut = d / "truncated.mp4"
    cut.write_bytes(data[: int(len(data) * 0.65)])
    cases.append(("truncated mp4, default request (needs 61 frames)", str(cut), dict(),
                  lambda frames, info: frames_cell(frames, [4 * k for k in range(16)])))
    cases.append(("truncated mp4, 4 frames from 10", str(cut), dict(num_frames=4, stride=3, start=10),
                  lambda frames, info: frames_cell(frames, [10, 13, 16, 19])))

    ramp = np.zeros((48, 64, 3), np.uint8)
    ramp[..., 0] = (np.arange(64) * 4)[None, :]
    ramp[..., 1] = 128
    ana = write_clip(d / "anamorphic.mp4", [ramp] * 2, sar=Fraction(2, 1), options={"qp": "0"}, pix_fmt="yuv444p")
    cases.append(("anamorphic (SAR 2:1), crop to square: stored columns kept (right: 20..43)", ana,
                  dict(num_frames=1, stride=1, start=0, size=(48, 48), resize_mode="crop"),
                  lambda frames, info: "{:.0f}..{:.0f}".format(*(frames[0, 24, [0, -1], 0].numpy() * 255 / 4))))

    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[:, :32] = (220, 30, 30, 255)
    rgba[:, 32:] = (255, 255, 255, 0)
    for name, kw in (("qtrle.mov", dict(codec="qtrle", pix_fmt="argb")),
                     ("vp9_alpha.webm", dict(codec="libvpx-vp9", pix_fmt="yuva420p", options={"lossless": "1"}))):
        path = write_clip(d / name, [rgba] * 2, frame_format="rgba", **kw)
        cases.append((f"alpha ({name}): transparent white over black", path, dict(num_frames=1, stride=1, start=0),
                      lambda frames, info: f"transparent area {frames[0, 24, 50].mean().item() * 255:.0f}/255"
                                           f" (right: 0)"))
    webp = pattern_clip(d / "anim.webp", 20, "libwebp_anim", fmt="webp", pix_fmt="yuva420p", options={"lossless": "1"})
    frames_case("animated WebP", webp, 4, 3, 2)
    gif = d / "anim.gif"
    write_video(gif, torch.from_numpy(np.stack([pattern(i) for i in range(20)])).float() / 255, 10)
    frames_case("GIF", str(gif), 4, 3, 2)
    for ext, kw in ((".3gp", dict(fmt="3gp")), (".mts", dict(fmt="mpegts")), (".flv", dict(codec="flv", fmt="flv")),
                    (".wmv", dict(codec="wmv2", fmt="asf")), (".mpg", dict(codec="mpeg2video", fmt="mpeg"))):
        frames_case(f"{ext} container", pattern_clip(d / f"c{ext}", 30, options={"g": "6"}, **kw), 4, 5, 3)
    a = pattern_clip(d / "a.ts", 20, fmt="mpegts")
    b = write_clip(d / "b.ts", [pattern(20 + i, 72, 96) for i in range(20)], fmt="mpegts", pts=list(range(20, 40)))
    joined = d / "size_change.ts"
    joined.write_bytes(Path(a).read_bytes() + Path(b).read_bytes())
    frames_case("resolution change mid-stream, size=None", str(joined), 8, 4, 4, size=None)
    long = pattern_clip(d / "ten_minutes.mp4", 6000, rate=10, options={"preset": "ultrafast", "g": "250"})
    for start in (0, 5936):
        wanted = [start + 4 * k for k in range(16)]
        cases.append((f"10 minutes (64x48, 10 fps): 16 frames from {start}, time per read", long,
                      dict(num_frames=16, stride=4, start=start),
                      lambda frames, info, wanted=wanted: frames_cell(frames, wanted)))
    return cases


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default=None)
    args = parser.parse_args(argv)
    before, rev = load_before(args.before)

    def old(use_decord):
        def read(path, **kw):
            saved = sys.modules.get("decord", ...)
            if not use_decord:
                sys.modules["decord"] = None
            try:
                kw.pop("select", None)
                return before.read_video_frames(path, **kw)
            finally:
                if saved is ...:
                    sys.modules.pop("decord", None)
                else:
                    sys.modules["decord"] = saved
        return read

    def new(path, **kw):
        _clear_cache()
        return read_video_frames(path, **kw)

    readers = {"before, decord": old(True), "before, PyAV": old(False), "after": new}
    with tempfile.TemporaryDirectory() as tmp:
        cases = build_cases(Path(tmp))
        print(f"before = {rev}\n")
        print(f"| case | {' | '.join(readers)} |")
        print("| --- |" + " --- |" * len(readers))
        for name, path, kw, judge in cases:
            cells = []
            for label, reader in readers.items():
                if label.startswith("before") and kw.get("select") == "time":
                    cells.append("(no such option)")
                    continue
                t0 = time.perf_counter()
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        frames, info, _ = reader(str(path), **{"size": None, **kw})
                    cell = judge(frames, info)
                    notes = [str(w.message) for w in caught if "truncated" in str(w.message)]
                    if notes:
                        cell += f"; warns: {notes[0].split(': ', 1)[1][:70]}"
                except Exception as e:  # noqa: BLE001
                    text = " ".join(str(e).split())
                    cell = f"error: {text[text.find(': ') + 2 if ': ' in text else 0:][:110]}"
                if "time per read" in name:
                    cell += f" ({time.perf_counter() - t0:.2f} s)"
                cells.append(cell.replace("|", "/"))
            print(f"| {name} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
