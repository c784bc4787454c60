"""python -m echoreel_core.library: index a library of captioned videos, search it, make pairs.

    python -m echoreel_core.library index DIR                 # build or update DIR/echoreel_index.safetensors
    python -m echoreel_core.library search DIR "a man doing a cartwheel" --top 5
    python -m echoreel_core.library pairs DIR --out train.json --per-target 1 --min-score 0.3

Captions come from JSON/CSV files in DIR, the official training JSON or sidecar .txt files
(echoreel_core/library/sources.py). Embeddings come from the text encoder of --model (default:
the shipped toy model); an index is usable only with the encoder that built it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ..common.cli_args import at_least
from ..common.threads import add_threads_argument, configure_threads
from .embed import TextEmbedder
from .index import InterruptedIndexing, load_index, update_index
from .pairs import DUPLICATE_THRESHOLD, make_pairs, write_pairs
from .lexical import ACTION_WEIGHT
from .search import LEXICAL_WEIGHT, Searcher



def load_embedder(model: str | None) -> TextEmbedder:
    """The text encoder and tokenizer of a video model file (default: the shipped toy model)."""
    from ..loading.checkpoints import load_video_model
    from ..toy.models import TOY_MODEL_FILE, shipped

    video_model = load_video_model(model or shipped(TOY_MODEL_FILE))
    return TextEmbedder(video_model.text_encoder, video_model.tokenizer)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def _at_least_one(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"must be a number >= 1, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m echoreel_core.library", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(q):
        q.add_argument("dir", help="the library folder")
        q.add_argument("--model", help="the video model whose text encoder embeds the captions "
                                       "(default: the shipped toy model)")
        add_threads_argument(q)

    def weights(q):
        q.add_argument("--lexical-weight", type=_fraction, default=LEXICAL_WEIGHT,
                       help=f"share of the lexical part in the score, the rest is the embedding's (default {LEXICAL_WEIGHT})")
        q.add_argument("--action-weight", type=_at_least_one, default=ACTION_WEIGHT,
                       help=f"weight of the prompt's action words, from its first word in -ing on (default {ACTION_WEIGHT:g}; 1: none)")

    q = sub.add_parser("index", help="build or update the folder's index (new or changed files only)")
    common(q)
    q.add_argument("--rebuild", action="store_true", help="start afresh (e.g. for another model's text encoder)")
    q = sub.add_parser("search", help="the best clips for a prompt, with scores and why")
    common(q)
    q.add_argument("prompt")
    q.add_argument("--top", type=at_least(1, "a whole number"), default=5)
    q.add_argument("--seed", type=int, default=0, help="orders clips of equal score")
    q.add_argument("--filter", default="", help="words every caption must contain; -word excludes a word")
    weights(q)
    q = sub.add_parser("pairs", help="for every clip, the best other clips of its action, as training JSON")
    common(q)
    q.add_argument("--out", required=True, help="the training JSON to write")
    q.add_argument("--per-target", type=at_least(1, "a whole number"), default=1, help="references per target clip (default 1)")
    q.add_argument("--min-score", type=float, default=0.0, help="keep references scoring at least this")
    q.add_argument("--duplicate-threshold", type=_fraction, default=DUPLICATE_THRESHOLD,
                   help=f"picture-signature cosine from which two clips count as one source (default {DUPLICATE_THRESHOLD})")
    q.add_argument("--seed", type=int, default=0, help="orders clips of equal score")
    weights(q)
    p.epilog = "every command's options (COMMAND --help says more):\n" + "".join(
        "  " + parser.format_usage().removeprefix("usage: ") for parser in sub.choices.values())
    return p


def run_index(args, embedder: TextEmbedder) -> int:
    started = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int, skipped: int) -> None:
        now = time.perf_counter()
        if done == total or now - last[0] >= 1.0:
            last[0] = now
            print(f"indexing: {done}/{total} clips to do ({skipped} unreadable) {now - started:.1f} s",
                  file=sys.stderr, flush=True)

    try:
        index, report = update_index(args.dir, embedder, rebuild=args.rebuild, progress=progress)
    except InterruptedIndexing as stop:
        print(f"interrupted: {stop.report.summary()}; saved {stop.index.path}: run the command again to continue",
              file=sys.stderr)
        return 130
    print(f"{index.path}: {report.summary()} ({time.perf_counter() - started:.1f} s)")
    return 0


def run_search(args, embedder: TextEmbedder) -> int:
    searcher = Searcher(load_index(args.dir), embedder, args.lexical_weight, args.action_weight)
    started = time.perf_counter()
    hits = searcher.search(args.prompt, args.top, args.seed, args.filter)
    took = time.perf_counter() - started
    if not hits:
        print(f"no clip in {args.dir} matches" + (f" the filter {args.filter!r}" if args.filter else ""))
        return 0
    for rank, hit in enumerate(hits, 1):
        e = hit.entry
        print(f"{rank}. {e.video}  score {hit.why(args.lexical_weight)}")
        print(f"   \"{e.caption}\"  {e.duration:.2f} s, {e.fps:g} fps, {e.width}x{e.height}")
    print(f"({len(searcher.index)} clips searched in {took * 1000:.1f} ms)", file=sys.stderr)
    return 0


def run_pairs(args, embedder: TextEmbedder) -> int:
    searcher = Searcher(load_index(args.dir), embedder, args.lexical_weight, args.action_weight)
    pairs, report = make_pairs(searcher, args.per_target, args.min_score, args.seed, args.duplicate_threshold)
    path = write_pairs(searcher, pairs, args.out)
    print(f"{path}: {report.pairs} pairs for {report.targets} clips ({report.without_reference} without a reference "
          f"scoring >= {args.min_score:g}; {report.duplicates_excluded} near-duplicate exclusions)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    print(configure_threads(args.threads), file=sys.stderr)
    if not Path(args.dir).is_dir():
        print(f"error: {args.dir}: no such library folder", file=sys.stderr)
        return 1
    try:
        embedder = load_embedder(args.model)
        return {"index": run_index, "search": run_search, "pairs": run_pairs}[args.command](args, embedder)
    except (ValueError, OSError) as error:  # LibraryError, CheckpointError, WriteError: one line each
        print(f"error: {error}", file=sys.stderr)
        return 1
