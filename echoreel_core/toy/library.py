"""A toy reference library: clips of every toy action with captions that name the action.

    python -m echoreel_core.toy.library OUT_DIR --per-action 12

writes OUT_DIR/videos/<action>_<nn>.mp4 (the toy world's clips: 16 designed frames, files of 61
frames at 32 fps, read with stride 4) and OUT_DIR/captions.json, a list of
{"video", "caption", "action", "clip"} (the ClipSpec, which re-renders the clip exactly), the
format `python -m echoreel_core.library` reads. Captions name every action, held-out ones
included ("a red circle orbiting clockwise": the toy world's "all" policy), since retrieval finds
clips by what their captions say. Objects (colour and shape) are drawn at random per clip from the
world's objects, so each action is shown by varied objects; actions go round-robin, so every
action has `per_action` clips. The clips come from a generator seeded by `seed` only ("library"
in its name: no clip of the world's base, prism or eval datasets recurs).

`duplicates` adds that many near-duplicates: another file of an existing clip (the same frames,
encoded again, "<name>_copy.mp4", the same caption), which `library pairs` must never pair with it.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..common.files import make_folder
from ..common.threads import add_threads_argument, configure_threads
from ..common.cli_args import at_least
from .world import ACTIONS, World, caption, sample_clip, write_clips, write_json

# the retrieval example workflow's library: input/toy_library, written by the ComfyUI pack on its
# first start (nodes/runtime.py provide_example_library) as `OUT_DIR --per-action 2` would
EXAMPLE_LIBRARY = "toy_library"
EXAMPLE_PER_ACTION = 2


def library_clips(per_action: int, seed: int = 0, world: World = World(), actions: tuple[str, ...] | None = None):
    """[(name, ClipSpec)] in the library's order."""
    actions = tuple(ACTIONS) if actions is None else actions
    rng = random.Random(f"echoreel-toy/library/{seed}")
    out = []
    for n in range(per_action):
        for action in actions:
            out.append((f"{action}_{n:03d}", sample_clip(rng, action, world)))
    return out


def write_library(out_dir, per_action: int, seed: int = 0, *, world: World = World(), duplicates: int = 0,
                  actions: tuple[str, ...] | None = None, workers: int = 1, progress=None) -> Path:
    """Write the library (see the module docstring); returns captions.json's path, written last."""
    if per_action < 1 or duplicates < 0 or workers < 1:
        raise ValueError(f"need per_action >= 1, duplicates >= 0, workers >= 1; got {per_action}, {duplicates}, {workers}")
    folder = Path(out_dir)
    make_folder(folder / "videos")
    clips = library_clips(per_action, seed, world, actions)
    if duplicates > len(clips):
        raise ValueError(f"duplicates must be at most the number of clips ({len(clips)}), got {duplicates}")
    named = [(name, spec) for name, spec in clips]
    named += [(f"{name}_copy", spec) for name, spec in random.Random(f"copies/{seed}").sample(clips, duplicates)]
    entries = [{"video": f"videos/{name}.mp4", "caption": caption(spec.colour, spec.shape, spec.action),
                "action": spec.action, "clip": asdict(spec)} for name, spec in named]
    jobs = [(spec, world, folder / "videos" / f"{name}.mp4") for name, spec in named]
    write_clips(jobs, workers, progress)
    path = folder / "captions.json"
    write_json(path, entries)  # last: a captions file on disk means all its videos are there
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m echoreel_core.toy.library",
                                     description="Write a toy reference library whose captions name the action.")
    parser.add_argument("out_dir")
    parser.add_argument("--per-action", type=at_least(1, "a count"), default=12,
                        help=f"clips of each of the {len(ACTIONS)} actions (default 12)")
    parser.add_argument("--duplicates", type=at_least(0, "a count"), default=0,
                        help="extra re-encoded copies of existing clips (default 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=at_least(1), default=min(4, os.cpu_count() or 1),
                        help="processes writing videos (the files do not depend on it)")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    print(configure_threads(args.threads), file=sys.stderr)
    start = time.perf_counter()

    def progress(k, total):
        if k == total or k % 100 == 0:
            print(f"library: {k}/{total} videos", file=sys.stderr, flush=True)

    try:
        path = write_library(args.out_dir, args.per_action, args.seed, duplicates=args.duplicates,
                             workers=args.workers, progress=progress)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    total = args.per_action * len(ACTIONS) + args.duplicates
    print(f"wrote {path} ({total} clips, {time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
