"""Training pairs by caption retrieval: for every clip, the best other clips of its action.

Each clip's caption is the query (its stored embedding, so nothing is encoded again); the
references are the best-scoring other clips (search.py), excluding
    - the clip itself;
    - clips of the same source: the same non-empty `source` in the caption file, or a picture
      signature (probe.py) whose cosine with the clip's reaches `duplicate_threshold` (0.95): a
      copy, a re-encode or another cut of the same shot would teach the Prism to copy pixels;
and keeping only those scoring at least `min_score`. Up to `per_target` references per clip,
each one entry of the official training JSON (what `python -m echoreel_core.train` reads):
    {"input_text": target caption, "gt_video_path": target, "inject_text": reference caption,
     "inject_video_path": reference, "score": ..., "lexical": ..., "embedding": ...}
with the video paths relative to the JSON's folder (extra keys are ignored by the trainer).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..common.files import atomic_write, make_folder
from .search import Hit, Searcher

DUPLICATE_THRESHOLD = 0.95


@dataclass
class PairsReport:
    targets: int = 0
    pairs: int = 0
    without_reference: int = 0  # targets with no reference at or above min_score
    duplicates_excluded: int = 0  # clips excluded as near-duplicates, summed over targets


def near_duplicates(searcher: Searcher, row: int, threshold: float = DUPLICATE_THRESHOLD) -> torch.Tensor:
    """(N,) bool: the clips of the same source as `row` (itself included)."""
    index = searcher.index
    same = index.signatures @ index.signatures[row] >= threshold
    source = index.entries[row].source
    if source:
        same |= torch.tensor([e.source == source for e in index.entries], dtype=torch.bool)
    same[row] = True
    return same


def references(searcher: Searcher, row: int, per_target: int = 1, min_score: float = 0.0, seed: int = 0,
               duplicate_threshold: float = DUPLICATE_THRESHOLD) -> tuple[list[Hit], int]:
    """The best references of clip `row` and how many near-duplicates were excluded."""
    entry = searcher.index.entries[row]
    score, lex, emb, words = searcher.scores(entry.caption, searcher.index.embeddings[row])
    excluded = near_duplicates(searcher, row, duplicate_threshold)
    allowed = ~excluded & (score >= min_score)
    hits = [searcher.hit(r, score, lex, emb, words) for r in searcher.rank(score, per_target, seed, allowed)]
    return hits, int(excluded.sum()) - 1


def make_pairs(searcher: Searcher, per_target: int = 1, min_score: float = 0.0, seed: int = 0,
               duplicate_threshold: float = DUPLICATE_THRESHOLD) -> tuple[list[tuple[int, Hit]], PairsReport]:
    """(target row, reference hit) for every clip of the index."""
    if per_target < 1:
        raise ValueError(f"per_target must be at least 1, got {per_target}")
    report = PairsReport(targets=len(searcher.index))
    out = []
    for row in range(len(searcher.index)):
        hits, dups = references(searcher, row, per_target, min_score, seed, duplicate_threshold)
        report.duplicates_excluded += dups
        report.without_reference += not hits
        out += [(row, h) for h in hits]
    report.pairs = len(out)
    return out, report


def pairs_json(searcher: Searcher, pairs: list[tuple[int, Hit]], out: str | Path) -> list[dict]:
    """The official training entries, video paths relative to `out`'s folder."""
    index = searcher.index
    base = Path(out).resolve().parent

    def rel(video: str) -> str:
        return Path(os.path.relpath(index.folder / video, base)).as_posix()

    return [{"input_text": index.entries[row].caption, "gt_video_path": rel(index.entries[row].video),
             "inject_text": hit.entry.caption, "inject_video_path": rel(hit.entry.video),
             "score": round(hit.score, 4), "lexical": round(hit.lexical, 4), "embedding": round(hit.embedding, 4)}
            for row, hit in pairs]


def write_pairs(searcher: Searcher, pairs: list[tuple[int, Hit]], out: str | Path) -> Path:
    out = Path(out)
    make_folder(out.resolve().parent)
    text = json.dumps(pairs_json(searcher, pairs, out), indent=1, ensure_ascii=False) + "\n"
    return atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
