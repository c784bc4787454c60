"""Reading 16 frames at stride 4 (squashed to 256x256, the official request) from the start, the
middle and the end of a long 1080p H.264 clip and a 10-minute clip, before and after: the reader
of an earlier commit (through decord, and through its PyAV fallback) against today's.

    .venv/bin/python bench/video_read.py                    # builds the clips once in outputs/bench_video
    .venv/bin/python bench/video_read.py --before <rev>     # the earlier reader to compare with
    .venv/bin/python bench/video_read.py --av1              # also a 10-minute AV1 clip (SVT-AV1)

Each read is timed from a cold reader (today's cache of scanned files cleared) so the packet scan
is counted; the best of --repeats runs (the machine may be shared: the best is the least
disturbed), every path measured in the same process.
Every frame carries its index (tests/video_corpus.py), so the table also says whether the frames
were the right ones. Frames per second = 16 / seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from echoreel_core.video_io import read_video_frames  # noqa: E402
from echoreel_core.video_io.read import _clear_cache  # noqa: E402
from video_corpus import pattern, read_index, write_clip  # noqa: E402

SIZE = (256, 256)


def load_before(rev: str | None):
    """The reader as it was at `rev` (default: the last commit with the single-file reader)."""
    if rev is None:  # the parent of the commit that replaced the file by a package, else HEAD
        gone = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%H", "--diff-filter=D",
                               "--", "echoreel_core/video_io.py"], capture_output=True, text=True).stdout.strip()
        rev = f"{gone}^" if gone else "HEAD"
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", rev], capture_output=True,
                             text=True, check=True).stdout.strip()
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:echoreel_core/video_io.py"],
                            capture_output=True, text=True, check=True).stdout
    name = "echoreel_core._video_io_before"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "echoreel_core"
    sys.modules[name] = module
    exec(compile(source, f"{rev}:echoreel_core/video_io.py", "exec"), module.__dict__)
    return module, rev


def frames_of(count: int, height: int, width: int):
    """A texture scrolling one pixel per frame, with the frame's index pattern on its top-left."""
    rng = np.random.default_rng(0)
    texture = (rng.random((height // 8 + 2, width // 8 + 2, 3)) * 255).astype(np.uint8)
    texture = np.repeat(np.repeat(texture, 8, 0), 8, 1)
    ph, pw = height // 2, width // 2  # the pattern on a quarter of the picture, big enough to survive 256x256
    for i in range(count):
        frame = np.ascontiguousarray(np.roll(texture, i, axis=1)[:height, :width])
        frame[:ph, :pw] = pattern(i, ph, pw)
        yield frame


def build(work: Path, name: str, count: int, height: int, width: int, codec: str, options: dict) -> Path:
    path = work / name
    if not path.exists():
        t0 = time.perf_counter()
        tmp = path.with_name("." + path.name)
        write_clip(tmp, frames_of(count, height, width), codec, rate=30, options=options)
        tmp.rename(path)
        print(f"built {path} ({count} frames {width}x{height}, {codec}) in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    return path


def judge(frames, start) -> str:
    """'' when every frame is the one asked for, else what is wrong."""
    got = [read_index(f[: f.shape[0] // 2, : f.shape[1] // 2]) for f in np.asarray(frames)]
    wanted = [start + 4 * k for k in range(16)]
    wrong = sum(g is not None and g != w for g, w in zip(got, wanted))
    unreadable = sum(g is None for g in got)
    return (f", WRONG {wrong}/16" if wrong else "") + (f", {unreadable} unreadable" if unreadable else "")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=str(ROOT / "outputs" / "bench_video"))
    parser.add_argument("--before", default=None, help="git revision of the earlier reader")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--av1", action="store_true", help="also a 10-minute AV1 clip")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    clips = {
        "1080p H.264, 60 s": build(work, "h264_1080p_60s.mp4", 1800, 1080, 1920, "libx264",
                                   {"preset": "veryfast"}),
        "10 min H.264 640x360": build(work, "h264_360p_10min.mp4", 18000, 360, 640, "libx264",
                                      {"preset": "veryfast"}),
    }
    if args.av1:
        clips["10 min AV1 640x360"] = build(work, "av1_360p_10min.mp4", 18000, 360, 640,
                                            "libsvtav1", {"preset": "12", "crf": "10"})
    before, rev = load_before(args.before)

    def old(path, start, use_decord):
        saved = sys.modules.get("decord", ...)
        if not use_decord:
            sys.modules["decord"] = None
        try:
            return before.read_video_frames(path, 16, 4, start, size=SIZE)[0]
        finally:
            if saved is ...:
                sys.modules.pop("decord", None)
            else:
                sys.modules["decord"] = saved

    def new(path, start):
        _clear_cache()
        return read_video_frames(path, 16, 4, start, size=SIZE)[0]

    readers = {f"before ({rev[:12]}), decord": lambda p, s: old(p, s, True),
               f"before ({rev[:12]}), PyAV": lambda p, s: old(p, s, False),
               "after": new}
    print(f"\n| clip | position | {' | '.join(readers)} |")
    print("| --- | --- |" + " --- |" * len(readers))
    for label, path in clips.items():
        count = 1800 if "1080p" in label else 18000
        for where, start in (("start", 0), ("middle", count // 2), ("end", count - 61)):
            cells = []
            for name, reader in readers.items():
                times, ok = [], ""
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    try:
                        frames = reader(str(path), start)
                    except Exception as e:  # noqa: BLE001
                        ok = f"error: {str(e).splitlines()[0][:60]}"
                        break
                    times.append(time.perf_counter() - t0)
                    ok = judge(frames.numpy(), start)
                if ok.startswith("error"):
                    cells.append(ok)
                    continue
                t = min(times)
                cells.append(f"{16 / t:.1f} fps ({t:.2f} s){ok}")
            print(f"| {label} | {where} ({start}) | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
