"""Processes and seeds: joining torchrun's process group, gathering from every rank, failing
together, seeding.

One module because these answer one question: how a run stays the same whatever the number of
processes, and stops as one. `init_distributed` joins the group that torchrun sets up
(WORLD_SIZE, RANK, LOCAL_RANK; nccl on CUDA, gloo on CPU) with a timeout and picks each rank's
device, and `wrap_ddp` puts DDP around the trained module; `gather_objects` collects a value from
every rank. A sample's randomness comes from `sample_seed(seed, position)`, its place in the global
sample stream, so it does not depend on which rank draws it; `seed_globals` seeds the global RNGs
(Python, NumPy, torch) for anything else.

Stopping together: a process that fails alone would leave the others waiting in their next
collective. `together()` makes a failure of any rank in a block (a model file missing on one
node, a GPU without the memory) an error on every rank, naming the rank; `main_works_alone()`
covers what rank 0 does while the others wait (saving, validation videos): they watch a counter
that rank 0 moves in torchrun's store, so a rank 0 that freezes is noticed within the timeout, as
a frozen peer is in any collective, however long the save itself takes.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import random
import threading
import time
import uuid
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


class PeerFailedError(RuntimeError):
    """Another rank of the run failed; the message names it."""


class PeerLostError(PeerFailedError):
    """Another rank stopped answering within the timeout (frozen, killed, cut off)."""


# What a collective raises when a peer stopped answering or went away (gloo and NCCL wordings).
LOST_PEER_WORDS = ("Timed out", "timed out", "Timeout", "Connection closed by peer", "Connection reset by peer",
                   "Broken pipe", "NCCL communicator was aborted", "DistNetworkError", "Socket Timeout")


def is_lost_peer(error: BaseException) -> bool:
    """Whether `error` is a collective's report of a peer that stopped answering or is gone."""
    text = f"{type(error).__name__}: {error}"
    return isinstance(error, PeerLostError) or (
        isinstance(error, RuntimeError) and any(word in text for word in LOST_PEER_WORDS))


def init_distributed(device: str = "auto", timeout_s: float | None = None) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU). timeout_s:
    how long any collective waits for the other ranks before it fails (None: torch's default,
    30 minutes, which is how long a frozen node would otherwise hang the run)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s) if timeout_s else None
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timeout)
    return DistInfo(rank, world, local, dev)


def wrap_ddp(module: torch.nn.Module, info: DistInfo) -> torch.nn.parallel.DistributedDataParallel | None:
    """DistributedDataParallel around the trained module when there are several processes, else None.
    The gradients live in DDP's all-reduce buckets instead of beside them: one copy less."""
    if info.world_size == 1:
        return None
    ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, gradient_as_bucket_view=True)


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


@contextlib.contextmanager
def together(what: str):
    """Run the block on every rank; if it raises on any rank, raise on every rank (one gather).

    The failing rank re-raises its own error; the others raise PeerFailedError naming the rank and
    its error, instead of waiting for it in the next collective until the timeout."""
    failure = None
    try:
        yield
    except Exception as error:  # noqa: BLE001 - any failure, expected or a bug, must stop every rank
        failure = error
    if is_distributed():
        reports = gather_objects(None if failure is None else f"{type(failure).__name__}: {failure}")
        if failure is None:
            for rank, report in enumerate(reports):
                if report is not None:
                    raise PeerFailedError(f"rank {rank} failed during {what}: {report}")
    if failure is not None:
        raise failure


class _Waiting:
    """This run's key space in torchrun's TCP store (a client connection of our own, a prefix that
    rank 0 drew at start): torchrun keeps one store across automatic restarts, so fixed key names
    (and torch's own process group names, which are counters) would meet a failed attempt's values."""

    store = None
    prefix = ""
    phases = 0


def _waiting_keys() -> str:
    """The key prefix of the next rank-0-only phase (made on first use, at the same point on every rank)."""
    if _Waiting.store is None:
        token = [uuid.uuid4().hex if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(token, src=0)
        _Waiting.prefix = f"echoreel/{token[0]}"
        _Waiting.store = _store_client()
    _Waiting.phases += 1
    return f"{_Waiting.prefix}/{_Waiting.phases}"


def _store_client():
    """A client of the store the process group was made with (torchrun's, at MASTER_ADDR:MASTER_PORT)."""
    if "MASTER_ADDR" not in os.environ:  # a group initialised another way: share its store
        return dist.distributed_c10d._get_default_store()
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                         timeout=datetime.timedelta(seconds=60))


WORKING, DONE, FAILED = "working", "done", "failed"


@contextlib.contextmanager
def main_works_alone(info: DistInfo, timeout_s: float, what: str):
    """A block that only rank 0 does work in (its saves, its validation videos) while the others wait.

    Waiting in a collective would fail at the timeout whenever the save or the sampling takes
    longer; instead rank 0 counts up a key in torchrun's store at least every second from a
    thread, and the others wait as long as the count moves, and no longer than `timeout_s` once
    it stops (rank 0 frozen, killed or cut off). If rank 0's block fails, they stop at once.
    A rank lost meanwhile is found by the next collective, as always."""
    if not is_distributed():
        yield
        return
    keys = _waiting_keys()
    interval = min(1.0, timeout_s / 5)
    if not info.is_main:
        yield
        _wait_for_main(keys, timeout_s, interval, what)
        return
    status, finished = [WORKING], threading.Event()

    def count_up() -> None:
        store, beat = _store_client(), 0  # a connection of its own: the main thread may use the other
        while not finished.wait(interval):
            beat += 1
            store.set(f"{keys}/alive", str(beat))
        store.set(f"{keys}/status", status[0])

    thread = threading.Thread(target=count_up, name="echoreel-rank0-alive", daemon=True)
    thread.start()
    try:
        yield
        status[0] = DONE
    except BaseException:
        status[0] = FAILED
        raise
    finally:
        finished.set()
        thread.join()


def _wait_for_main(keys: str, timeout_s: float, interval: float, what: str) -> None:
    store, seen, deadline = _Waiting.store, None, time.monotonic() + timeout_s
    while True:
        if store.check([f"{keys}/status"]):
            if store.get(f"{keys}/status").decode() == FAILED:
                raise PeerFailedError(f"rank 0 failed during {what} (its log says why)")
            return
        beat = store.get(f"{keys}/alive") if store.check([f"{keys}/alive"]) else None
        if beat != seen:
            seen, deadline = beat, time.monotonic() + timeout_s
        elif time.monotonic() > deadline:
            raise PeerLostError(f"rank 0 stopped answering during {what} for {timeout_s:g} s")
        time.sleep(interval / 2)


def sample_seed(seed: int, position: int) -> int:
    """The seed of one sample's randomness: fixed by the run seed and its global stream position."""
    digest = hashlib.blake2b(f"{seed}/{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seed_globals(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
