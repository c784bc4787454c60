"""The library's index file: caption embeddings, the lexical index and what each video holds.

`<library>/echoreel_index.safetensors` (written only through files.atomic_write, so a reader sees
the previous index or the new one whole) holds
    tensors: `embeddings` (N, d) float32, one pooled normalised caption embedding per clip (embed.py);
        `signatures` (N, 768) int8, 127 times the unit picture signature (probe.py); the BM25
        postings `lexical_offsets`, `lexical_doc`, `lexical_tf`, `lexical_length` (lexical.py);
    metadata `index`: JSON with the format version, the encoder that made the embeddings
        (family, width, dim, fingerprint), one record per indexed clip (video path relative to the
        library, caption, source, extras from the caption file, the video's size and mtime, frame
        count, fps, width, height, duration) in row order, the lexical vocabulary and the version
        of the word rules it follows (an older one is rebuilt from the captions on loading), and the
        videos that could not be read (with the size and mtime they had, so that an unchanged
        unreadable file is not decoded again, but counted again).

`update_index` is incremental: a clip whose video (size, mtime) and caption are unchanged keeps
its row; a changed caption is embedded again; a new or changed video is probed; an index that
did not change is not written again. Clips are done in
batches and the index is saved every `save_every` seconds and at the end, so an interrupted run
(Ctrl-C included: it saves what is done, then stops) keeps its work and the next run continues.
An index made by another text encoder is refused (IndexMismatchError) unless `rebuild=True`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..common.files import atomic_write
from ..video_io import VideoReadError
from . import lexical
from .embed import EncoderInfo, TextEmbedder
from .probe import SIGNATURE_SIZE, Facts, probe_clip
from .sources import INDEX_FILE, Clip, Problem, scan

log = logging.getLogger("echoreel.library")

FORMAT = "echoreel-library-index"
VERSION = 1
BATCH = 64


class LibraryError(ValueError):
    """A library or index that cannot be used; the message says what to do."""


class IndexMismatchError(LibraryError):
    """The index was built with another text encoder than the one asked to use it."""


@dataclass
class Entry:
    """One indexed clip (a row of the index)."""

    video: str
    caption: str
    source: str
    extra: dict
    size: int
    mtime_ns: int
    frames: int
    fps: float
    width: int
    height: int
    duration: float


@dataclass
class Index:
    folder: Path
    encoder: EncoderInfo
    entries: list[Entry]
    embeddings: torch.Tensor  # (N, d) float32
    signatures: torch.Tensor  # (N, SIGNATURE_SIZE) float32
    unreadable: dict[str, dict] = field(default_factory=dict)  # video -> {size, mtime_ns, reason}
    postings: lexical.Postings | None = None
    lexical_version: str = lexical.VERSION  # the word rules the postings were built with
    stale_words: bool = False  # loaded from a file whose postings followed older word rules

    def __post_init__(self):
        if self.postings is None or self.lexical_version != lexical.VERSION:
            self.postings = lexical.Postings.build([lexical.words(e.caption) for e in self.entries])

    @property
    def path(self) -> Path:
        return self.folder / INDEX_FILE

    def __len__(self) -> int:
        return len(self.entries)

    def check_encoder(self, info: EncoderInfo) -> None:
        if info.fingerprint != self.encoder.fingerprint:
            raise IndexMismatchError(
                f"{self.path} was built with another text encoder ({self.encoder.describe()}) than this model's "
                f"({info.describe()}): its embeddings mean nothing to this one. Rebuild it with this model: "
                f"`python -m echoreel_core.library index {self.folder} --model <this checkpoint> --rebuild` "
                f"(or delete the file)"
            )


def index_path(folder: str | Path) -> Path:
    return Path(folder) / INDEX_FILE


def save_index(index: Index) -> Path:
    p = index.postings
    tensors = {
        "embeddings": index.embeddings.float().contiguous(),
        "signatures": (index.signatures * 127).round().clamp(-127, 127).to(torch.int8).contiguous(),
        "lexical_offsets": p.offsets.contiguous(),
        "lexical_doc": p.doc.contiguous(),
        "lexical_tf": p.tf.contiguous(),
        "lexical_length": p.length.contiguous(),
    }
    meta = {"format": FORMAT, "version": VERSION, "lexical": lexical.VERSION, "encoder": asdict(index.encoder),
            "entries": [asdict(e) for e in index.entries], "vocabulary": p.vocabulary,
            "unreadable": index.unreadable}
    metadata = {"format": FORMAT, "index": json.dumps(meta, ensure_ascii=False)}
    return atomic_write(index.path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_index(folder: str | Path) -> Index:
    """The folder's index; LibraryError when there is none or it is not one this code writes."""
    folder = Path(folder)
    path = index_path(folder)
    if not path.is_file():
        raise LibraryError(f"{folder} has no index ({INDEX_FILE}): build it with "
                           f"`python -m echoreel_core.library index {folder}`")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        meta = json.loads(metadata.get("index", "null"))
    except (SafetensorError, OSError, json.JSONDecodeError) as error:
        raise LibraryError(f"{path}: not a readable library index ({str(error)[:200]}): rebuild it with "
                           f"`python -m echoreel_core.library index {folder} --rebuild`") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise LibraryError(f"{path}: not a version-{VERSION} library index: rebuild it with "
                           f"`python -m echoreel_core.library index {folder} --rebuild`")
    entries = [Entry(**e) for e in meta["entries"]]
    postings = lexical.Postings(meta["vocabulary"], tensors["lexical_offsets"], tensors["lexical_doc"],
                                tensors["lexical_tf"], tensors["lexical_length"])
    index = Index(folder, EncoderInfo(**meta["encoder"]), entries, tensors["embeddings"].float(),
                  tensors["signatures"].float() / 127, meta.get("unreadable", {}), postings, meta.get("lexical", ""))
    index.lexical_version = lexical.VERSION  # __post_init__ rebuilt the postings if they were older
    index.stale_words = meta.get("lexical", "") != lexical.VERSION
    return index


@dataclass
class Report:
    """What an update did; `problems` are the caption problems of sources.scan plus unreadable videos."""

    clips: int = 0  # captioned clips found
    indexed: int = 0  # rows in the saved index
    kept: int = 0  # unchanged rows reused
    probed: int = 0  # videos read this run
    embedded: int = 0  # captions embedded this run
    removed: int = 0  # rows whose clip is gone
    unreadable: int = 0  # videos that do not decode (this run's and unchanged earlier ones)
    problems: list[Problem] = field(default_factory=list)
    interrupted: bool = False

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts().items())) or "none"
        return (f"{self.indexed} clips indexed ({self.kept} unchanged, {self.probed} videos read, "
                f"{self.embedded} captions embedded, {self.removed} removed); skipped: {skipped}")


def _stat(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def update_index(folder: str | Path, embedder: TextEmbedder, *, rebuild: bool = False,
                 probe: Callable[[Path], Facts] = probe_clip, save_every: float = 30.0,
                 progress: Callable[[int, int, int], None] | None = None, save: bool = True) -> tuple[Index, Report]:
    """Bring the folder's index up to date (see the module docstring); returns it and a Report.
    progress(done, to_do, skipped) is called after every batch. save=False keeps it in memory."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise LibraryError(f"{folder}: no such library folder")
    info = embedder.info
    old = None
    if not rebuild and index_path(folder).is_file():
        old = load_index(folder)
        old.check_encoder(info)
    clips, problems = scan(folder)
    report = Report(clips=len(clips), problems=list(problems))
    uncaptioned = [p.where for p in problems if p.kind == "no caption"]
    for p in problems:
        if p.kind != "no caption":
            log.warning("skipped %s", p.message())
    if uncaptioned:
        log.warning("skipped %d videos that no caption file names and that have no .txt sidecar: %s%s",
                    len(uncaptioned), ", ".join(uncaptioned[:5]), ", ..." if len(uncaptioned) > 5 else "")

    rows = {e.video: i for i, e in enumerate(old.entries)} if old else {}
    known_bad = dict(old.unreadable) if old else {}
    done: dict[str, tuple[Entry, torch.Tensor, torch.Tensor]] = {}
    unreadable: dict[str, dict] = {}
    to_probe: list[tuple[Clip, tuple[int, int]]] = []
    to_embed: list[tuple[Clip, Entry, torch.Tensor]] = []  # facts known, caption new
    top = str(folder)
    for clip in clips:
        stat = _stat(os.path.join(top, clip.video))
        i = rows.get(clip.video)
        if i is not None and (old.entries[i].size, old.entries[i].mtime_ns) == stat:
            e = old.entries[i]
            fresh = Entry(clip.video, clip.caption, clip.source, clip.extra, e.size, e.mtime_ns, e.frames, e.fps,
                          e.width, e.height, e.duration)
            if e.caption == clip.caption:
                done[clip.video] = (fresh, old.embeddings[i], old.signatures[i])
                report.kept += 1
            else:
                to_embed.append((clip, fresh, old.signatures[i]))
            continue
        bad = known_bad.get(clip.video)
        if bad is not None and (bad["size"], bad["mtime_ns"]) == stat:
            unreadable[clip.video] = bad
            report.problems.append(Problem("unreadable video", clip.video, bad["reason"] + " (unchanged since the last run)"))
            continue
        to_probe.append((clip, stat))
    present = {c.video for c in clips}
    report.removed = sum(1 for v in rows if v not in present)
    if (old is not None and not old.stale_words and not to_probe and not to_embed and not report.removed
            and unreadable == old.unreadable and all(done[e.video][0] == e for e in old.entries)):
        report.indexed, report.unreadable = len(old), len(unreadable)
        return old, report  # nothing changed: the file stays as it is

    order = {c.video: n for n, c in enumerate(clips)}

    def assemble() -> Index:
        videos = sorted(done, key=order.__getitem__)
        entries = [done[v][0] for v in videos]
        emb = torch.stack([done[v][1] for v in videos]) if videos else torch.zeros(0, info.dim)
        sig = torch.stack([done[v][2] for v in videos]) if videos else torch.zeros(0, SIGNATURE_SIZE)
        return Index(folder, info, entries, emb, sig, dict(unreadable))

    def embed(batch: list[tuple[Clip, Entry, torch.Tensor]]) -> None:
        if not batch:
            return
        vectors = embedder.embed([c.caption for c, _, _ in batch])
        for (clip, entry, sig), vector in zip(batch, vectors):
            done[clip.video] = (entry, vector, sig)
        report.embedded += len(batch)

    total = len(to_probe) + len(to_embed)
    finished, last_save = 0, time.monotonic()
    pending: list[tuple[Clip, Entry, torch.Tensor]] = []
    try:
        for start in range(0, len(to_embed), BATCH):
            embed(to_embed[start:start + BATCH])
            finished += len(to_embed[start:start + BATCH])
            if progress is not None:
                progress(finished, total, len(unreadable))
        for start in range(0, len(to_probe), BATCH):
            batch = pending  # probed, not yet embedded: embedded before saving if Ctrl-C comes now
            for clip, stat in to_probe[start:start + BATCH]:
                path = folder / clip.video
                try:
                    facts = probe(path)
                except VideoReadError as error:
                    reason = str(error).removeprefix(f"{path}: ")
                    unreadable[clip.video] = {"size": stat[0], "mtime_ns": stat[1], "reason": reason[:300]}
                    report.problems.append(Problem("unreadable video", clip.video, reason))
                    log.warning("skipped %s: %s", clip.video, reason)
                    continue
                report.probed += 1
                entry = Entry(clip.video, clip.caption, clip.source, clip.extra, stat[0], stat[1], facts.frames,
                              facts.fps, facts.width, facts.height, round(facts.duration, 4))
                batch.append((clip, entry, facts.signature))
            embed(batch)
            batch.clear()
            finished += len(to_probe[start:start + BATCH])
            if progress is not None:
                progress(finished, total, len(unreadable))
            if save and time.monotonic() - last_save >= save_every:
                save_index(assemble())
                last_save = time.monotonic()
        index = assemble()
    except KeyboardInterrupt:
        report.interrupted = True
        embed(pending)
        index = assemble()
        if save:
            save_index(index)
        report.indexed = len(index)
        report.unreadable = len(unreadable)
        raise InterruptedIndexing(index, report) from None
    if save and not _same(old, index):
        save_index(index)
    report.indexed = len(index)
    report.unreadable = len(unreadable)
    return index, report


def _same(old: Index | None, new: Index) -> bool:
    """Whether `new` holds what the file of `old` holds (then it is not written again, so that its
    modification time says when the library last changed)."""
    return (old is not None and not old.stale_words and old.encoder == new.encoder and old.unreadable == new.unreadable
            and old.entries == new.entries and torch.equal(old.embeddings, new.embeddings))


class InterruptedIndexing(KeyboardInterrupt):
    """Ctrl-C during update_index: what was done is saved; `.index`, `.report` hold it."""

    def __init__(self, index: Index, report: Report):
        super().__init__("indexing interrupted")
        self.index = index
        self.report = report
