"""Every process of a training run agrees on what it trains before it trains: one all-gather at every
start and every resume (an automatic restart is a start too).

Without it a run can corrupt itself silently: with a node-local output folder and
`train.resume=auto`, one node resumes at step 4 while another starts at step 0 with a fresh
optimizer; DDP averages their gradients anyway, the logged loss is wrong and the saved
checkpoint is off by an update. So every rank sends, in one all-gather:

- output folder: whether it reads the marker that rank 0 has just written into train.output_dir
  with a fresh random token (`MARKER`). A folder per node (the same path on each node's own disk)
  fails here, before any rank reads a checkpoint. Compared by content, not by path: a shared
  folder may be mounted under another path on each node.
- world size, and the configuration without its file paths (those may differ between nodes for
  the same files; what they name is compared next, by content);
- dataset: the sha256 of the dataset JSON's bytes; base model: its file name and size (hashing
  10 GB at every start would cost more than it finds);
- resumed checkpoint: its step and the sha256 of its bytes (or the error reading it);
- data order: the seed and the position in the sample stream the run continues from.

Any difference stops every rank at once with the same message, naming the first differing field
(in the order above) and the lowest rank that differs from rank 0, with both values.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from ..common.files import WriteError, atomic_write, make_folder
from .config import PATH_KEYS
from .distributed import DistInfo, gather_objects
from .state import CHECKPOINTS, RESUME_WORDS, TrainStateError, load_checkpoint, resolve_checkpoint

MARKER = ".echoreel_run"


class AgreementError(RuntimeError):
    """The ranks of a run disagree on what they train; the message names the rank and the field."""


@dataclass(frozen=True)
class Field:
    """One thing the ranks must agree on: `value` is compared, `shown` is what the message says."""

    value: object
    shown: str


def agree_on_start(cfg: DictConfig, info: DistInfo) -> dict:
    """Every rank reads the checkpoint it would resume from, then all ranks compare what they are
    about to train in one all-gather; returns this rank's resume ({"state", "path", ...}, or {})."""
    several = info.world_size > 1
    out = Path(cfg.train.output_dir)
    shared = claim_output_folder(out, info) if several else True
    resumed = read_resume(cfg, out / CHECKPOINTS, several) if shared else {}  # a folder of its own: nothing to trust
    if several:
        agree(run_fields(cfg, info, shared, resumed))
    if resumed.get("error"):
        raise TrainStateError(resumed["error"])  # the same on every rank, or agree() had stopped them
    return resumed


def read_resume(cfg: DictConfig, folder: Path, several: bool) -> dict:
    """The checkpoint train.resume names, loaded on the CPU, its step, position and (with several
    ranks, to compare) the sha256 of its bytes; a failure is returned for the agreement."""
    if not cfg.train.resume:
        return {}
    try:
        path = resolve_checkpoint(cfg.train.resume, folder)
        if path is None:
            return {}
        state = load_checkpoint(path)
        digest = file_sha256(path) if several else None
    except (TrainStateError, OSError) as error:
        return {"error": str(error)}
    return {"path": path, "state": state, "step": state["step"], "position": state["position"], "sha256": digest}


def claim_output_folder(out: Path, info: DistInfo) -> bool:
    """Rank 0 writes a fresh token into out/MARKER and broadcasts it; returns whether this rank
    reads the same token there. One broadcast, which also makes every rank wait for the write."""
    payload: list = [None]
    if info.is_main:
        token = uuid.uuid4().hex  # never from the seeded RNGs: each start must differ
        try:
            make_folder(out)
            atomic_write(out / MARKER, lambda tmp: tmp.write_text(token, encoding="utf-8"))
            payload = [("token", token)]
        except WriteError as error:
            payload = [("error", str(error))]
    dist.broadcast_object_list(payload, src=0)
    kind, value = payload[0]
    if kind == "error":
        raise AgreementError(f"rank 0 cannot use the output folder: {value}")
    try:
        return (out / MARKER).read_text(encoding="utf-8") == value
    except OSError:
        return False


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def config_fields(cfg: DictConfig) -> dict[str, object]:
    """The resolved configuration as flat `key: value` pairs, file paths left out."""
    flat: dict[str, object] = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = node

    walk("", OmegaConf.to_container(cfg, resolve=True))
    for key in PATH_KEYS:
        flat.pop(key, None)
    if flat.get("train.resume") not in (None, *RESUME_WORDS):
        flat["train.resume"] = "<a checkpoint path>"
    return flat


def run_fields(cfg: DictConfig, info: DistInfo, folder_shared: bool, resumed: dict) -> dict[str, Field]:
    """This rank's side of the agreement. `resumed`: {"path", "step", "sha256", "position", "error"}."""
    out = Path(cfg.train.output_dir)
    flat = config_fields(cfg)
    config_hash = hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()
    data = Path(cfg.data.json)
    model = Path(cfg.model.checkpoint) if cfg.model.checkpoint else None
    try:
        data_hash = file_sha256(data)
    except OSError as error:
        data_hash = f"unreadable ({error.strerror or error})"
    try:
        model_id = (model.name, model.stat().st_size) if model else None
    except OSError as error:
        model_id = (model.name, f"unreadable ({error.strerror or error})")
    if resumed.get("error"):
        checkpoint = Field(("error", resumed["error"]), f"cannot resume: {resumed['error']}")
    elif resumed.get("path"):
        checkpoint = Field((resumed["step"], resumed["sha256"]),
                           f"step {resumed['step']} from {resumed['path']} (sha256 {(resumed['sha256'] or '?')[:16]})")
    else:
        checkpoint = Field((0, None), "none (a fresh start at step 0)")
    position = resumed.get("position", 0)
    return {
        "output folder": Field(folder_shared, str(out)),
        "world size": Field(info.world_size, str(info.world_size)),
        "configuration": Field(config_hash, json.dumps(flat, sort_keys=True, default=str)),
        "dataset": Field(data_hash, f"{data} (sha256 {data_hash[:16]})"),
        "base model": Field(model_id, f"{model} ({model_id[1]} bytes)" if model_id else "given in Python"),
        "resumed checkpoint": checkpoint,
        "data order": Field((cfg.train.seed, position), f"seed {cfg.train.seed}, stream position {position}"),
    }


HINTS = {
    "output folder": "train.output_dir must be one folder that every node shares (a network filesystem), "
                     "not a folder per node",
    "configuration": "start every node with the same configuration and overrides",
    "dataset": "every node must read the same dataset JSON",
    "base model": "every node must load the same base model file",
    "resumed checkpoint": "the ranks would train from different states; check that train.output_dir is shared "
                          "and that every rank resumes the same checkpoint",
    "data order": "the ranks would read different parts of the sample stream",
    "world size": "",
}


def agree(fields: dict[str, Field]) -> None:
    """One all-gather of every rank's fields; raises AgreementError on every rank at the first
    difference (field order first, then the lowest rank). Nothing to compare with one process."""
    everyone = gather_objects(fields)
    reference = everyone[0]
    for name in reference:
        for rank, theirs in enumerate(everyone[1:], start=1):
            if theirs[name].value != reference[name].value:
                others = sorted({n for r in everyone[1:] for n in reference if r[n].value != reference[n].value} - {name})
                raise AgreementError(_message(name, rank, reference[name], theirs[name], others))


def _message(name: str, rank: int, ours: Field, theirs: Field, others: list[str]) -> str:
    if name == "output folder":
        detail = (f"rank 0 has just written {Path(ours.shown) / MARKER}, and rank {rank} does not find it in its "
                  f"train.output_dir {theirs.shown}")
    elif name == "configuration":
        a, b = json.loads(ours.shown), json.loads(theirs.shown)
        keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        detail = "; ".join(f"{k} is {b.get(k)!r} on rank {rank}, {a.get(k)!r} on rank 0" for k in keys[:5])
    else:
        detail = f"rank {rank}: {theirs.shown}; rank 0: {ours.shown}"
    hint = f" ({HINTS[name]})" if HINTS.get(name) else ""
    also = f"; these differ too: {', '.join(others)}" if others else ""
    return f"rank {rank} does not agree with rank 0 on the {name}: {detail}{hint}{also}. Every rank stops."
