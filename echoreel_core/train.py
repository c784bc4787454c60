"""`python -m echoreel_core.train`: train the Action Prism and the Action Integration layers.

    python -m echoreel_core.train --config lvdm model.checkpoint=lvdm.ckpt \\
        data.json=dataset/U91.json train.output_dir=runs/lvdm
    torchrun --nproc_per_node 4 -m echoreel_core.train --config lvdm ...     # one node, 4 GPUs
    python -m echoreel_core.train --config runs/lvdm/config.yaml --resume latest
    python -m echoreel_core.train --config videocrafter2 --estimate-memory  # GiB per GPU, nothing loaded

The command line; the trainer is echoreel_core/training/ (loop.py: the run, its loop and what
training does; config.py: every key and its --help line). A failure ends the run with one line
and exit status 2: a bad configuration or dataset, a checkpoint that cannot be resumed, a write
that fails, a run the memory cannot hold, or a lost process of the run (naming the last
checkpoint, which stays the last good one).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from .common.files import WriteError
from .common.threads import add_threads_argument, configure_threads
from .loading.checkpoints import CheckpointError
from .pipelines.memory import InsufficientMemoryError
from .training.agreement import AgreementError
from .training.config import ConfigError, key_help, load_config, preset_configs
from .training.data import DatasetError
from .training.distributed import PeerFailedError, is_lost_peer
from .training.loop import train
from .training.memory import memory_report, presets_to_estimate
from .training.state import CHECKPOINTS, TrainStateError, resolve_checkpoint

log = logging.getLogger("echoreel_core.train")


def main(argv: list[str] | None = None) -> int:
    return run_command(argv)[0]


def run_command(argv: list[str] | None = None) -> tuple[int, bool]:
    """The command line: (exit status, whether another process of the run was lost)."""
    parser = argparse.ArgumentParser(
        prog="python -m echoreel_core.train",
        description="Train the EchoReel Action Prism and integration layers on (target, reference) video pairs.",
        epilog=key_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help=f"a preset ({', '.join(preset_configs())}) or a YAML file")
    parser.add_argument("--resume", help="latest | auto | a checkpoint path (same as train.resume=...)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    parser.add_argument("--estimate-memory", action="store_true",
                        help="print the per-GPU memory this configuration needs (checkpointing on and off, one GPU "
                             "and DDP) and exit; counted on fake tensors, nothing is loaded or allocated")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s [rank {rank}] %(message)s", stream=sys.stderr)
    log.info("%s", configure_threads(args.threads))
    cfg, lost = None, False
    try:
        cfg = load_config(args.config, args.overrides + ([f"train.resume={args.resume}"] if args.resume else []))
        if args.print_config:
            print(OmegaConf.to_yaml(cfg))
            return 0, False
        if args.estimate_memory:
            device = "cpu" if cfg.train.device == "cpu" else "cuda"
            print(memory_report(cfg, presets_to_estimate(cfg), device))
            return 0, False
        train(cfg)
    except RuntimeError as error:  # first: PeerFailedError and the collectives' errors are RuntimeErrors
        if not isinstance(error, (PeerFailedError, AgreementError)) and not is_lost_peer(error):
            raise
        lost = isinstance(error, PeerFailedError) or is_lost_peer(error)
        log.error("%s", lost_peer_message(error, cfg) if is_lost_peer(error) else error)
        return 2, lost
    except (ConfigError, DatasetError, TrainStateError, CheckpointError, WriteError, InsufficientMemoryError) as error:
        log.error("%s", error)
        return 2, False
    finally:
        if dist.is_available() and dist.is_initialized() and not lost:
            dist.destroy_process_group()  # (after a lost peer it would wait for that peer)
    return 0, False


def lost_peer_message(error: RuntimeError, cfg: DictConfig) -> str:
    """One line for a collective that a peer did not answer: what happened, the timeout, the checkpoint."""
    checkpoints = Path(cfg.train.output_dir) / CHECKPOINTS
    try:
        latest = resolve_checkpoint("latest", checkpoints)
    except TrainStateError:
        latest = None
    kept = f"the last checkpoint on disk is {latest}" if latest else "no checkpoint had been saved"
    return (f"lost contact with another process of the run: {str(error).splitlines()[0]} (train.timeout_s="
            f"{cfg.train.timeout_s}: a process that is frozen, killed or cut off is given up after that long); "
            f"{kept}; with torchrun --max-restarts and train.resume=auto the run continues from it")


if __name__ == "__main__":
    status, lost = run_command()
    if lost:  # end now: the process group's threads would wait for the lost peer, and torchrun should see
        logging.shutdown()  # this worker fail at once (its restart then counts, as the failed one's does)
        sys.stdout.flush()
        os._exit(status)
    sys.exit(status)
