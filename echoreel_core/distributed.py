"""Processes and seeds: joining torchrun's process group, gathering from every rank, seeding.

One module because the two answer one question: how a run stays the same whatever the number of
processes. `init_distributed` joins the group that torchrun sets up (WORLD_SIZE, RANK,
LOCAL_RANK; nccl on CUDA, gloo on CPU) and picks each rank's device; `gather_objects` collects a
value from every rank. A sample's randomness comes from `sample_seed(seed, position)`, its place
in the global sample stream, so it does not depend on which rank draws it; `seed_globals` seeds
the global RNGs (Python, NumPy, torch) for anything else.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: its rank, the number of processes, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_objects(obj) -> list:
    """Every rank's `obj` (on every rank); [obj] when not distributed."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sample_seed(seed: int, position: int) -> int:
    """The seed of one sample's randomness: fixed by the run seed and its global stream position."""
    digest = hashlib.blake2b(f"{seed}/{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seed_globals(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
