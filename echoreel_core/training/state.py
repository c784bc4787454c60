"""Training checkpoints: what one holds, how a run saves it and resumes from it, and the files on
disk (atomic writes, the `latest` pointer, RNG states, safe loading).

A checkpoint holds everything a resume needs to continue bit-exactly: the EchoReel weights, the
optimizer, schedule and scaler states, the step, the position in the sample stream, every rank's
global RNG states and the entries skipped so far (`capture`, `restore`); `save` writes it on rank 0
with the `echoreel.safetensors` export beside it while the other ranks wait.

A checkpoint is written with files.atomic_write (a temporary file in the same folder, fsync'ed,
moved into place with os.replace: atomic on POSIX and Windows); only then is the `latest` pointer, a
one-line text file, replaced the same way. A process killed at any moment therefore leaves
`latest` naming a complete checkpoint (or no `latest` at all before the first save), never a
partial one; stray temporary files are removed at the next start.

Checkpoints hold only tensors and plain Python values, so they load with
`torch.load(weights_only=True)`: RNG states are stored as tensors, tuples and ints. No pickle is
ever loaded in the unrestricted mode.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..common.files import atomic_write, make_folder, temporaries
from ..echoreel.weights import save_echoreel
from ..loading.checkpoints import DTYPES
from .data import Skip
from .distributed import gather_objects, main_works_alone

if TYPE_CHECKING:
    from .loop import Trainer

log = logging.getLogger("echoreel_core.train")

CHECKPOINTS = "checkpoints"  # the folder in train.output_dir
EXPORT = "echoreel.safetensors"  # the weights for the Load EchoReel node, refreshed at every save
LATEST = "latest"
RESUME_WORDS = (LATEST, "auto")  # the train.resume values that are not checkpoint paths
CHECKPOINT_NAME = re.compile(r"^step_(\d+)\.pt$")
FORMAT = "echoreel.train_state"
# Test hook: seconds to sleep after every write() of a checkpoint file, which stretches a save
# over a long window so a test can kill the process in the middle of it (the only way to hit
# that window reliably on a fast disk). Never set in real runs.
SLOW_SAVE_ENV = "ECHOREEL_TRAIN_SLOW_SAVE"


class TrainStateError(ValueError):
    """A training checkpoint that is missing or unusable; the message names it."""


# ---- a run's checkpoint --------------------------------------------------------------------------

def capture(run: Trainer) -> dict:
    """Everything a resume needs, as tensors and plain values (weights_only-loadable). Every rank
    takes part (its RNG states and skipped entries are gathered)."""
    return {
        "format": FORMAT,
        "step": run.step,
        "position": run.position,  # global samples consumed: where the data stream resumes
        "echoreel": run.echoreel.state_dict(),
        "echoreel_config": run.echoreel.config.to_json(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": gather_objects(rng_state()),  # one per rank
        "skipped": sorted({i for ranks in gather_objects(sorted(run.batches.skipped)) for i in ranks}),
        "world_size": run.dist.world_size,
        "config": OmegaConf.to_yaml(run.cfg),
    }


def restore(run: Trainer, state: dict, path: Path) -> None:
    """Continue from a loaded checkpoint: weights, optimizer, schedule, scaler, step, data position, RNGs."""
    if state["echoreel_config"] != run.echoreel.config.to_json():
        raise TrainStateError(f"{path}: trained an EchoReel of another configuration than this run's")
    run.echoreel.load_state_dict(state["echoreel"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.step, run.position = state["step"], state["position"]
    rngs = state["rng"]
    if len(rngs) == run.dist.world_size:
        set_rng_state(rngs[run.dist.rank])
    else:
        log.warning("%s was saved by %d processes, this run has %d: global RNGs reseeded",
                    path, len(rngs), run.dist.world_size)
    skipped = run.batches.skipped
    skipped.update({i: Skip(i, "", "earlier", "skipped before the resume") for i in state["skipped"] if i not in skipped})
    if run.dist.is_main:
        log.info("resumed from %s at step %d", path, run.step)


def save(run: Trainer) -> None:
    """The checkpoint of this step and the refreshed `echoreel.safetensors`, written by rank 0."""
    state = capture(run)  # every rank takes part in the gathers
    with main_works_alone(run.dist, run.cfg.train.timeout_s, f"the save of step {run.step}"):
        if run.dist.is_main:
            log.info("saving checkpoint step %d", run.step)
            path = save_checkpoint(run.out / CHECKPOINTS, run.step, state, run.cfg.train.keep_checkpoints)
            export = run.out / EXPORT
            save_echoreel(run.echoreel, export, DTYPES[run.cfg.echoreel.export_dtype])
            log.info("saved %s and %s", path, export)


def prepare_output_folder(cfg: DictConfig, out: Path) -> None:
    """Rank 0, at start: the folder made, what an interrupted export or save left removed, and the
    resolved configuration written as config.yaml (every path absolute: it resumes from anywhere)."""
    make_folder(out)
    for tmp in temporaries(out, EXPORT):  # an export cut short
        tmp.unlink(missing_ok=True)
    removed = remove_stale_temporaries(out / CHECKPOINTS)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted save", removed)
    text = OmegaConf.to_yaml(cfg)
    atomic_write(out / "config.yaml", lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ---- files ---------------------------------------------------------------------------------------

def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


class _SlowFile:
    """A file wrapper that sleeps after each write (see SLOW_SAVE_ENV)."""

    def __init__(self, f, delay: float):
        self.f, self.delay = f, delay

    def write(self, data) -> int:
        n = self.f.write(data)
        time.sleep(self.delay)
        return n

    def flush(self) -> None:
        self.f.flush()


def _to_file(write) -> Callable[[Path], None]:
    """An atomic_write callback that opens the temporary file and calls write(file) on it."""
    def callback(tmp: Path) -> None:
        delay = float(os.environ.get(SLOW_SAVE_ENV, "0") or 0)
        with open(tmp, "wb") as f:
            write(_SlowFile(f, delay) if delay > 0 else f)
    return callback


def save_checkpoint(folder: Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write `step_N.pt` atomically, point `latest` at it, then drop all but the newest `keep`."""
    folder = make_folder(folder)
    path = folder / checkpoint_name(step)
    atomic_write(path, _to_file(lambda f: torch.save(state, f)))
    atomic_write(folder / LATEST, _to_file(lambda f: f.write(f"{path.name}\n".encode())))
    if keep > 0:
        steps = sorted(int(m.group(1)) for p in folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name)))
        for old in steps[:-keep]:
            if old != step:
                (folder / checkpoint_name(old)).unlink(missing_ok=True)
    return path


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files that a killed save left behind; returns how many."""
    stale = temporaries(folder)
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def resolve_checkpoint(spec: str, folder: Path) -> Path | None:
    """`latest` -> the checkpoint the pointer names; `auto` -> the same or None; else a path."""
    folder = Path(folder)
    if spec in RESUME_WORDS:
        pointer = folder / LATEST
        if not pointer.is_file():
            if spec == "auto":
                return None
            raise TrainStateError(f"{pointer}: no checkpoint to resume from (no `latest` pointer yet)")
        name = pointer.read_text().strip()
        if not CHECKPOINT_NAME.match(name):
            raise TrainStateError(f"{pointer}: does not name a checkpoint ({name!r})")
        return folder / name
    return Path(spec)


def load_checkpoint(path: Path) -> dict:
    """torch.load with weights_only=True; a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise TrainStateError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every failure means "not a usable checkpoint"
        raise TrainStateError(f"{path}: not a readable training checkpoint ({error})") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainStateError(f"{path}: not an EchoReel training checkpoint")
    return state


# ---- RNG states, as weights_only-loadable values ------------------------------------------------

def rng_state() -> dict:
    """This process's global RNG states: torch CPU, every CUDA device, Python, NumPy."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),  # (version, tuple of 625 ints, None)
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
