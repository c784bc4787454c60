"""Reference retrieval: a folder of captioned videos, indexed by caption, searched by prompt.

May import: common, video_io (cli.py, an entry point: any part).

One job per module:
- sources.py: the clips of a library folder and their captions (JSON, CSV, the official training
  JSON, sidecar .txt files), and the problems found.
- probe.py: a video's duration, fps, size and picture signature (for near-duplicates).
- lexical.py: index words and BM25.
- embed.py: pooled, normalised caption embeddings from a model's own text encoder, and the
  encoder's fingerprint.
- index.py: the index file (incremental, atomic, interruptible) and the encoder check.
- search.py: prompt -> best clips, with the lexical and embedding parts of each score.
- pairs.py: training pairs by retrieval, in the official training JSON.
- cli.py: `python -m echoreel_core.library index|search|pairs`.
"""

from .embed import EncoderInfo, TextEmbedder
from .index import Entry, Index, IndexMismatchError, LibraryError, Report, load_index, update_index
from .pairs import make_pairs, write_pairs
from .search import LEXICAL_WEIGHT, Hit, Searcher
from .sources import INDEX_FILE, Clip, scan

__all__ = [
    "INDEX_FILE", "LEXICAL_WEIGHT", "Clip", "EncoderInfo", "Entry", "Hit", "Index", "IndexMismatchError",
    "LibraryError", "Report", "Searcher", "TextEmbedder", "load_index", "make_pairs", "scan", "update_index",
    "write_pairs",
]
