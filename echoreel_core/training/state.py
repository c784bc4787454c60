"""Training checkpoints on disk: atomic writes, the `latest` pointer, RNG states, safe loading.

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

import os
import random
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..common.files import atomic_write, make_folder, temporaries

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
