"""Training steps per second at a reduced config, with and without gradient checkpointing and caches.

    python bench/train_steps.py                       # CPU, reduced LVDM layout, 8 frames at 64x64
    python bench/train_steps.py --steps 20 --threads 8 --size 128

The model keeps the LVDM architecture and an f8 VAE at reduced widths (UNet 32 channels, 2
levels; VAE 32 channels; 2 Prism layers of 64): the ratios between the UNet, the Prism and the
frozen encoders are not the official ones, so read the table as "what each option changes", not
as a prediction for the full model. "CPU time" divides by the process's CPU seconds, which a busy
shared machine disturbs far less than wall time (with one thread they agree on an idle machine). Each configuration runs in its own process (so the peak
memory column is its own) on the same generated mp4 files, through `echoreel_core.train.Trainer`
with the data loaded in the main process (num_workers=0: decoding is part of the step):
- plain: VAE, text encoder and video decoding at every step, as the official training;
- checkpointing: the UNet blocks and Prism layers recomputed in backward;
- cached: every video posterior and text context read from a cache filled beforehand.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echoreel_core.loading.checkpoints import save_video_model  # noqa: E402
from echoreel_core.models.autoencoder import AutoencoderConfig  # noqa: E402
from echoreel_core.models.video_model import VideoModel  # noqa: E402
from echoreel_core.models.presets import tiny_preset  # noqa: E402
from echoreel_core.common.threads import add_threads_argument, configure_threads  # noqa: E402
from echoreel_core.training.loop import Trainer  # noqa: E402
from echoreel_core.training.config import load_config  # noqa: E402
from echoreel_core.video_io import write_video  # noqa: E402

CONFIGS = {
    "plain": [],
    "checkpointing": ["train.gradient_checkpointing=true"],
    "cached": ["data.cache=true"],
    "checkpointing + cached": ["train.gradient_checkpointing=true", "data.cache=true"],
}


def make_world(root: Path, args) -> None:
    """A reduced LVDM base model file and `entries` pairs of random mp4 clips."""
    base = tiny_preset("lvdm-short-t2v")
    preset = dataclasses.replace(base, vae=AutoencoderConfig(ch=32, ch_mult=(1, 2, 4, 4), num_res_blocks=1))
    torch.manual_seed(0)
    model = VideoModel(preset).eval()
    for p in model.unet.parameters():
        p.data.normal_(0, 0.05)
    save_video_model(model, root / "base.safetensors")
    g = torch.Generator().manual_seed(0)
    entries = []
    length = (args.frames - 1) * args.stride + 1
    for i in range(args.entries):
        for kind in ("target", "reference"):
            write_video(root / f"{kind}{i}.mp4", torch.rand(length, args.size, args.size, 3, generator=g), fps=8)
        entries.append({"input_text": f"a square moving {i}", "gt_video_path": f"target{i}.mp4",
                        "inject_text": f"a circle moving {i}", "inject_video_path": f"reference{i}.mp4"})
    (root / "data.json").write_text(json.dumps(entries))


def overrides(root: Path, out: Path, args, extra: list[str]) -> list[str]:
    return [f"model.checkpoint={root / 'base.safetensors'}", f"data.json={root / 'data.json'}",
            f"train.output_dir={out}", f"data.cache_dir={root / 'cache'}", f"data.frames={args.frames}",
            f"data.stride={args.stride}", f"data.height={args.size}", f"data.width={args.size}",
            "data.num_workers=0", f"train.batch_size={args.batch}", "validation.every=0", "train.save_every=100000",
            "echoreel.prism.layers=2", "echoreel.prism.latent_dim=64", "echoreel.prism.heads=2",
            "echoreel.prism.head_dim=32", "echoreel.prism.latent_text_dim=64", *extra]


def run_one(name: str, root: Path, args) -> dict:
    """Time `args.steps` optimizer steps after `args.warmup` (in this process)."""
    extra = CONFIGS[name]
    if "data.cache=true" in extra:  # fill the cache: one pass over every entry
        fill = args.entries // args.batch + 1
        Trainer(load_config(None, overrides(root, root / "fill", args, [*extra, f"train.max_steps={fill}"]))).fit()
    cfg = load_config(None, overrides(root, root / name.replace(" ", ""), args,
                                      [*extra, f"train.max_steps={args.warmup + args.steps + 1}"]))
    trainer = Trainer(cfg)
    samples = iter(trainer.loader())
    for _ in range(args.warmup):
        trainer.train_step([next(samples)])
    saved = saved_activation_bytes(trainer, next(samples))
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        trainer.train_step([next(samples)])
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"name": name, "steps_per_s": args.steps / elapsed, "cpu_steps_per_s": args.steps / cpu,
            "saved_mib": saved / 2**20, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def saved_activation_bytes(trainer: Trainer, samples) -> int:
    """Bytes the forward pass keeps for backward (outside checkpointed regions, whose own hooks
    take over): the activation memory that gradient checkpointing trades for recomputation."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    batch = trainer.batches.prepare(samples)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = trainer.forward(batch)
    loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="clip height and width in pixels (f8 VAE)")
    parser.add_argument("--entries", type=int, default=8)
    add_threads_argument(parser)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    print(configure_threads(args.threads))  # each configuration's process is given the same arguments
    if args.one:
        print(json.dumps(run_one(args.one, Path(args.root), args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_world(root, args)
        rows = []
        for name in CONFIGS:
            command = [sys.executable, __file__, "--one", name, "--root", str(root),
                       *[f"--{k}={v}" for k, v in vars(args).items() if k not in ("root", "one") and v is not None]]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    plain, plain_cpu = rows[0]["steps_per_s"], rows[0]["cpu_steps_per_s"]
    print(f"batch {args.batch}, {args.frames} frames at {args.size}x{args.size}, "
          f"{args.steps} timed steps after {args.warmup}")
    print("| configuration | steps/s (wall) | vs plain | steps/s (CPU time) | vs plain | saved activations (MiB) "
          "| peak RSS (MiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['name']} | {row['steps_per_s']:.2f} | {row['steps_per_s'] / plain:.2f}x | "
              f"{row['cpu_steps_per_s']:.2f} | {row['cpu_steps_per_s'] / plain_cpu:.2f}x | {row['saved_mib']:.1f} | "
              f"{row['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
