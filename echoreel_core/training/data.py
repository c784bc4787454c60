"""Training data: the official EchoReel JSON, its videos read as the official loader reads them,
and optional on-disk caches of what the frozen encoders compute from them.

The JSON is a list of objects, one (target, reference) pair each:

    {"input_text": prompt, "gt_video_path": target video,
     "inject_text": reference caption, "inject_video_path": reference video}

`reference_text` / `reference_video_path` (the names the official README documents) are accepted
for the last two; paths are relative to the JSON file's folder, as officially.

Videos: 16 frames with stride 4 from frame 0, squash-resized to the model's size by the decoder
(`video_io.read_video_frames`, which is what the official loader does). Short videos follow the
official loader by default (`short_videos="official"`): a target with fewer frames than asked
for is skipped, and any video that is too short for the stride has its last frame repeated, with
a warning. "repeat" never skips; "skip" skips every video that would need a repeated frame.

Bad samples never stop training. Entries with wrong keys, empty captions or missing files are
found when the JSON is read; videos that do not decode are found when they are loaded, and the
loader then takes the next entry of the JSON instead (the official loader skips to the next
index too), so every batch keeps its size. Each problem is reported once, naming the entry
index and the file. A JSON that cannot be read or is not a list is a fatal `DatasetError`.

Caches (optional): the VAE posterior of every video (mean and log-variance, so the stochastic
posterior sample is still drawn at every step, as officially), the text contexts, and for I2V
the image tokens of the target's first frame. Keys hash the file's resolved path, size and
modification time, the reading settings and a fingerprint of the encoder's weights, so a changed
file, setting or model never hits a stale entry. Entries are safetensors files written
atomically, so concurrent ranks and killed runs leave no half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..common.files import atomic_write, make_folder
from ..video_io import VideoReadError, frames_to_model_input, read_video_frames

log = logging.getLogger(__name__)

PROMPT, TARGET = "input_text", "gt_video_path"
CAPTION_KEYS = ("inject_text", "reference_text")  # code spelling first, README spelling second
REFERENCE_KEYS = ("inject_video_path", "reference_video_path")
SHORT_VIDEO_POLICIES = ("official", "repeat", "skip")


class DatasetError(ValueError):
    """A data problem that stops training: the JSON itself, or no usable sample at all."""


@dataclass(frozen=True)
class Entry:
    """One usable JSON entry; `index` is its position in the JSON list (named in messages)."""

    index: int
    prompt: str
    target: Path
    caption: str
    reference: Path


@dataclass(frozen=True)
class Skip:
    """A skipped entry: why, and the file concerned (the JSON itself for malformed entries)."""

    index: int
    path: str
    kind: str  # "wrong keys", "empty caption", "missing file", "unreadable video", "short video"
    reason: str

    def message(self) -> str:
        return f"entry {self.index} ({self.path}): {self.reason}; skipped"


def _first_key(item: dict, keys: tuple[str, ...]):
    for key in keys:
        if key in item:
            return key
    return None


def load_entries(json_path: str | Path) -> tuple[list[Entry], list[Skip]]:
    """Parse the dataset JSON into usable entries and skipped ones; fatal only for the file itself."""
    json_path = Path(json_path)
    try:
        items = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{json_path}: cannot read the dataset JSON ({error})") from error
    except json.JSONDecodeError as error:
        raise DatasetError(f"{json_path}: not valid JSON ({error})") from error
    if not isinstance(items, list):
        raise DatasetError(
            f"{json_path}: the dataset JSON must be a list of entries "
            f'{{"{PROMPT}", "{TARGET}", "{CAPTION_KEYS[0]}", "{REFERENCE_KEYS[0]}"}}, found a {type(items).__name__}'
        )
    root = json_path.parent
    entries, skips = [], []
    for index, item in enumerate(items):
        entry_or_skip = _parse_entry(index, item, root, json_path)
        (entries if isinstance(entry_or_skip, Entry) else skips).append(entry_or_skip)
    return entries, skips


def _parse_entry(index: int, item, root: Path, json_path: Path) -> Entry | Skip:
    if not isinstance(item, dict):
        return Skip(index, str(json_path), "wrong keys", f"is a {type(item).__name__}, not an object")
    caption_key, reference_key = _first_key(item, CAPTION_KEYS), _first_key(item, REFERENCE_KEYS)
    missing = [k for k, present in ((PROMPT, PROMPT in item), (TARGET, TARGET in item),
                                    (" or ".join(CAPTION_KEYS), caption_key), (" or ".join(REFERENCE_KEYS), reference_key))
               if not present]
    if missing:
        return Skip(index, str(json_path), "wrong keys",
                    f"lacks {', '.join(missing)} (it has {', '.join(map(str, item)) or 'no keys'})")
    for key in (PROMPT, caption_key):
        if not isinstance(item[key], str) or not item[key].strip():
            return Skip(index, str(json_path), "empty caption", f"`{key}` is empty or not text ({item[key]!r})")
    for key in (TARGET, reference_key):
        if not isinstance(item[key], str) or not item[key].strip():
            return Skip(index, str(json_path), "wrong keys", f"`{key}` is not a path ({item[key]!r})")
    target, reference = root / item[TARGET], root / item[reference_key]
    for path in (target, reference):
        if not path.is_file():
            return Skip(index, str(path), "missing file", "no such file")
    return Entry(index, item[PROMPT], target, item[caption_key], reference)


@dataclass(frozen=True)
class VideoSpec:
    """How videos are read (the official loader: 16 frames, stride 4, from 0, squash to the size)."""

    frames: int = 16
    stride: int = 4
    start: int = 0
    height: int = 256
    width: int = 256
    resize_mode: str = "squash"
    short_videos: str = "official"

    def __post_init__(self):
        if self.short_videos not in SHORT_VIDEO_POLICIES:
            raise ValueError(f"short_videos must be one of {SHORT_VIDEO_POLICIES}, got {self.short_videos!r}")


class SampleError(Exception):
    """One video of a sample cannot be used; the loader skips the entry."""

    def __init__(self, path: Path, kind: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.kind, self.reason = str(path), kind, reason


def read_clip(path: Path, spec: VideoSpec, is_target: bool) -> tuple[torch.Tensor, list[str]]:
    """A video as model input (3, t, H, W) in [-1, 1] and the notes to log (repeated frames).

    Raises SampleError for a missing or unreadable video or one the short-video policy skips."""
    prefix = f"{path}: "
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            frames, info, repeated = read_video_frames(
                path, spec.frames, spec.stride, spec.start, (spec.height, spec.width), spec.resize_mode
            )
    except VideoReadError as error:
        reason = str(error).removeprefix(prefix)
        raise SampleError(path, "missing file" if reason == "no such file" else "unreadable video", reason) from None
    notes = [str(w.message) for w in caught]
    needed = spec.start + (spec.frames - 1) * spec.stride + 1
    if spec.short_videos == "skip" and repeated:
        raise SampleError(path, "short video", f"has {info.frame_count} frames, {needed} are needed (short_videos=skip)")
    if spec.short_videos == "official" and is_target and info.frame_count < spec.frames:
        raise SampleError(path, "short video", f"the target has {info.frame_count} frames, fewer than "
                          f"{spec.frames}: the official loader skips such targets")
    return frames_to_model_input(frames)[0], notes  # (3, t, H, W)


# ---- caches ------------------------------------------------------------------------------------

def fingerprint(module: torch.nn.Module) -> str:
    """A hash of a module's weights: cache entries of another model are never reused."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class TensorCache:
    """One folder of safetensors entries, `<root>/<kind>/<key[:2]>/<key>.safetensors`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def get(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        path = self.path(kind, key)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:  # a damaged entry is recomputed, never trusted
            log.warning("cache entry %s is unreadable (%s); recomputing it", path, error)
            return None

    def put(self, kind: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        path = self.path(kind, key)
        make_folder(path.parent)
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


@dataclass(frozen=True)
class CacheKeys:
    """What the cache keys hash beyond the file: the reading settings and the encoders' weights."""

    vae: str
    text: str
    image: str | None = None  # I2V only

    def video(self, path: Path, spec: VideoSpec) -> str:
        stat = path.stat()
        return _digest({"file": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                        "frames": spec.frames, "stride": spec.stride, "start": spec.start, "height": spec.height,
                        "width": spec.width, "resize_mode": spec.resize_mode, "short_videos": spec.short_videos,
                        "vae": self.vae})

    def text_key(self, text: str) -> str:
        return _digest({"text": text, "encoder": self.text})

    def image_key(self, video_key: str) -> str:
        return _digest({"video": video_key, "encoder": self.image})


# ---- the dataset ---------------------------------------------------------------------------------

@dataclass
class Clip:
    """One video of a sample: its cache key, and either the decoded pixels or the cached tensors."""

    key: str | None
    pixels: torch.Tensor | None = None  # (3, t, H, W) in [-1, 1]
    cached: dict[str, torch.Tensor] | None = None  # {"mean", "logvar"} (b-less, (c, t, h, w)) [+ "image"]


@dataclass
class Sample:
    """What the loader hands the training loop for one stream position."""

    position: int  # the sample's place in the global stream (fixes its data and its noise)
    index: int  # the JSON entry it came from
    prompt: str
    caption: str
    target: Clip
    reference: Clip
    texts: dict[str, torch.Tensor] = field(default_factory=dict)  # cached contexts by text
    skips: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class PairDataset(torch.utils.data.Dataset):
    """Map-style dataset over stream positions: position p is entry perm_e[p % N] of epoch e = p // N.

    Every rank derives the same permutation from the seed, and the sampler gives each rank its
    own positions, so the ranks' shards partition each epoch (as DistributedSampler does) and
    a run resumes at any position exactly."""

    def __init__(self, entries: list[Entry], spec: VideoSpec, seed: int, cache: TensorCache | None = None,
                 keys: CacheKeys | None = None, i2v: bool = False):
        if not entries:
            raise DatasetError("the dataset has no usable entry")
        self.entries, self.spec, self.seed = entries, spec, seed
        self.cache, self.keys, self.i2v = cache, keys, i2v
        self._perm: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def entry_at(self, position: int) -> int:
        """The entry (list index into `entries`) that a stream position reads."""
        epoch, offset = divmod(position, len(self.entries))
        if self._perm is None or self._perm[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.entries), generator=generator))
        return int(self._perm[1][offset])

    def __getitem__(self, position: int) -> Sample:
        first = self.entry_at(position)
        skips = []
        for attempt in range(len(self.entries)):  # the next entry of the JSON replaces a bad one
            entry = self.entries[(first + attempt) % len(self.entries)]
            try:
                sample = self._load(position, entry)
            except SampleError as error:
                skips.append(Skip(entry.index, error.path, error.kind, error.reason))
                continue
            sample.skips = skips
            return sample
        raise DatasetError(f"no entry of the dataset could be loaded ({len(skips)} failed; first: {skips[0].message()})")

    def _clip(self, path: Path, is_target: bool, notes: list[str]) -> Clip:
        try:
            key = self.keys.video(path, self.spec) if self.cache is not None else None
        except OSError as error:  # removed since the JSON was read
            raise SampleError(path, "missing file", f"cannot be read ({error.strerror or error})") from None
        if key is not None:
            cached = self.cache.get("video", key)
            image = self.cache.get("image", self.keys.image_key(key)) if (self.i2v and is_target) else {}
            if cached is not None and image is not None:
                return Clip(key, cached={**cached, **image})
        pixels, clip_notes = read_clip(path, self.spec, is_target)
        notes.extend(clip_notes)
        return Clip(key, pixels=pixels)

    def _load(self, position: int, entry: Entry) -> Sample:
        notes: list[str] = []
        target = self._clip(entry.target, True, notes)
        reference = self._clip(entry.reference, False, notes)
        texts = {}
        if self.cache is not None:
            for text in (entry.prompt, entry.caption):
                hit = self.cache.get("text", self.keys.text_key(text))
                if hit is not None:
                    texts[text] = hit["context"]
        return Sample(position, entry.index, entry.prompt, entry.caption, target, reference, texts, notes=notes)


class StreamSampler(torch.utils.data.Sampler):
    """This rank's stream positions for `micro_steps` micro-batches from global position `start`:
    micro-batch m of rank r reads start + m*B*W + r*B + [0, B). With one rank and batch W*B it
    reads the same samples as W ranks with batch B, which is what makes multi-GPU runs equal
    single-GPU ones; a resume with another batch size or rank count continues the same stream."""

    def __init__(self, batch_size: int, rank: int, world_size: int, start: int, micro_steps: int):
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.start, self.micro_steps = start, micro_steps

    def __iter__(self):
        b = self.batch_size
        for micro in range(self.micro_steps):
            base = self.start + micro * b * self.world_size + self.rank * b
            yield from range(base, base + b)

    def __len__(self) -> int:
        return max(0, self.micro_steps) * self.batch_size


def collate(samples: list[Sample]) -> list[Sample]:
    """Samples stay a list: cached and decoded clips mix in one batch, the trainer stacks them."""
    return samples
