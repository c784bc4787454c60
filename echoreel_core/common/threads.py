"""Torch's CPU thread count for the command lines, chosen one way everywhere and said out loud.

Every CLI (training, conversion, the toy world and model, the benchmarks) calls
`configure_threads(args.threads)` after `add_threads_argument(parser)`, and prints or logs the
line it returns among its first lines: a run's speed, and a benchmark's numbers, mean little
without the thread count they ran with.

Which count wins, first match:
    1. `--threads N`: the user asked this command for N.
    2. OMP_NUM_THREADS, when set to a positive count (its first entry, for OpenMP's nested
       "4,2" form): the variable torch users already set for every program at once.
    3. All the cores this process may run on (its CPU affinity, which containers, `taskset`
       and job schedulers narrow; `os.cpu_count()` where the platform has no affinity),
       divided between the processes that torchrun starts on this machine (LOCAL_WORLD_SIZE),
       so that several ranks do not oversubscribe the same cores.
Under torchrun with several local processes, torchrun itself sets OMP_NUM_THREADS=1 when the
user did not set it, and a process cannot tell that default from a choice: there a "1" is taken
as torchrun's default and the cores are divided (pass `--threads 1` for one thread per process).
"""

from __future__ import annotations

import argparse
import os

import torch

from .cli_args import at_least

HELP = ("torch CPU threads (default: OMP_NUM_THREADS when set, else all the cores this process may use, "
        "divided between torchrun's local processes)")


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """Give a CLI the shared `--threads N` option (a positive count; default None: see the module)."""
    parser.add_argument("--threads", type=at_least(1, "a whole number of threads"), metavar="N", help=HELP)


def configure_threads(requested: int | None) -> str:
    """Set torch's intra-op thread count as the module docstring says and return the line that
    says how many and why, e.g. "torch threads: 16 (all available cores)"."""
    count, reason = _choose(requested)
    torch.set_num_threads(count)
    return f"torch threads: {count} ({reason})"


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity where the platform has one."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _choose(requested: int | None) -> tuple[int, str]:
    if requested is not None:
        if requested < 1:
            raise ValueError(f"the thread count must be at least 1, got {requested}")
        return requested, "--threads"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    omp = _omp_threads()
    torchrun_default = omp == 1 and local > 1  # see the module docstring
    if omp is not None and not torchrun_default:
        return omp, "OMP_NUM_THREADS"
    cores = available_cores()
    if local == 1:
        return cores, "all available cores"
    note = "; OMP_NUM_THREADS=1 taken as torchrun's default" if torchrun_default else ""
    return max(1, cores // local), f"{cores} available cores / {local} local processes{note}"


def _omp_threads() -> int | None:
    """OMP_NUM_THREADS's count when it is set to one (first entry of a nested list), else None."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None
