"""The README's training memory table: per-GPU peaks of the shipped presets, counted on fake tensors.

    python bench/train_memory.py                          # every official preset, batch 1, 2 and 4
    python bench/train_memory.py --configs videocrafter2 --batches 1 2

Each cell is `python -m echoreel_core.train --estimate-memory`'s figure (training/memory.py): the
preset config's precision (bf16, base weights in bf16) and clip size, validation on, for one
process and for DDP (gradient buckets). Nothing is loaded or allocated; a cell takes about as long
as a few real steps on a CPU (tens of seconds at full size), so the whole table takes a while.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echoreel_core.pipelines.memory import GiB  # noqa: E402
from echoreel_core.models.presets import PRESETS  # noqa: E402
from echoreel_core.common.threads import add_threads_argument, configure_threads  # noqa: E402
from echoreel_core.training.config import load_config  # noqa: E402
from echoreel_core.training.memory import HEADROOM, estimate_training_memory  # noqa: E402

CONFIGS = {"lvdm": ["lvdm-short-t2v"], "videocrafter2": ["videocrafter2-t2v-512"],
           "videocrafter1_t2v": ["videocrafter1-t2v-512", "videocrafter1-t2v-1024"],
           "videocrafter1_i2v": ["videocrafter1-i2v-512"]}


def fits(total: int) -> str:
    return "/".join("yes" if total + HEADROOM <= size * GiB else "no" for size in (24, 80))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4])
    add_threads_argument(parser)
    args = parser.parse_args()
    print(configure_threads(args.threads), file=sys.stderr)
    print("| preset | batch per GPU | checkpointing | one GPU, GiB | per GPU with DDP, GiB | fits 24/80 GB (DDP) |")
    print("|---|---|---|---|---|---|")
    for config in args.configs:
        for name in CONFIGS[config]:
            for batch in args.batches:
                for checkpointing in (True, False):
                    cfg = load_config(config, [f"train.batch_size={batch}",
                                               f"train.gradient_checkpointing={str(checkpointing).lower()}"])
                    started = time.perf_counter()
                    one = estimate_training_memory(cfg, PRESETS[name], 1, "cuda")
                    ddp = estimate_training_memory(cfg, PRESETS[name], 2, "cuda")
                    print(f"| {name} | {batch} | {'on' if checkpointing else 'off'} | {one.total / GiB:.1f} | "
                          f"{ddp.total / GiB:.1f} | {fits(ddp.total)} |", flush=True)
                    print(f"{name} batch {batch} checkpointing {checkpointing}: {time.perf_counter() - started:.0f} s; "
                          f"DDP parts: base {ddp.frozen_base / GiB:.2f}, weights {ddp.trainable / GiB:.2f}, AdamW "
                          f"{ddp.optimizer / GiB:.2f}, buckets {ddp.ddp_buffers / GiB:.2f}, activations "
                          f"{ddp.activations / GiB:.2f}, validation {ddp.validation / GiB:.2f}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
