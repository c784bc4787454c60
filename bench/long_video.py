"""Long videos (Reuse-and-Diffuse): wall time per clip against one clip, and peak memory per K.

    python bench/long_video.py                          # VideoCrafter2 layout, UNet width 64, 16 frames 128x128
    python bench/long_video.py --width 320 --vae-width 128 --size 320x512 --steps 50   # official sizes (GPU)

Each K runs `long_text_to_video` in a fresh process (so its peak RSS is its own), same seed and
settings, after a one-clip warm-up of the same shapes; "peak RSS growth" is how far the run
raised the warm-up's peak. The sampler keeps one clip's latents and a bounded history, and each
clip is decoded as soon as it is sampled, so what grows with K should be the output frames
(float32 on the CPU) only: "live tensors" sums every live tensor but the model's at the last
step of each clip (found via the GC, its cost taken off the times). On CUDA the peak allocated
GPU memory is reported too, which should not grow with K at all. Random weights: the numbers
measure cost, not quality.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import resource
import subprocess
import sys
import time

import torch

from echoreel_core.common.threads import add_threads_argument, configure_threads


def one_run(args) -> dict:
    from echoreel_core.pipelines.long_video import long_text_to_video
    from echoreel_core.models.video_model import VideoModel
    from echoreel_core.pipelines.generate import SamplingSettings
    from echoreel_core.models.presets import PRESETS, tiny_preset

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base, tiny = PRESETS["videocrafter2-t2v-512"], tiny_preset("videocrafter2-t2v-512")
    # the official UNet and VAE layouts at reduced widths; the tiny text encoder (its cost is once per run)
    preset = dataclasses.replace(
        base,
        unet=dataclasses.replace(base.unet, model_channels=args.width, context_dim=tiny.unet.context_dim),
        vae=dataclasses.replace(base.vae, ch=args.vae_width),
        text=tiny.text,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = VideoModel(preset).eval()
    height, width = args.height, args.width_px
    settings = SamplingSettings(height=height, width=width, frames=args.frames, fps=8, steps=args.steps, cfg=12.0)
    skip = {id(t) for t in model.buffers()}  # the model's own buffers are not the run's memory
    live: list[float] = []

    def live_tensor_mib() -> float:
        """MiB held by every live plain tensor but the model's (CPU or CUDA), found via the GC;
        each storage counted once (a view and its base are two tensors over one storage)."""
        storages = {}
        for o in gc.get_objects():
            if type(o) is torch.Tensor and id(o) not in skip:
                storage = o.untyped_storage()
                storages[(storage.device, storage.data_ptr())] = storage.nbytes()
        return sum(storages.values()) / 2**20

    def callback(i: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        if i % args.steps == args.steps - 1:  # each clip's last step, before it is decoded
            live.append(live_tensor_mib())

    with torch.no_grad():
        # warm-up (one 1-step clip: the same shapes), so per-clip times and memory growth are steady-state
        long_text_to_video(model, "a fox", dataclasses.replace(settings, steps=1), num_clips=1, overlap=args.overlap)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        cpu_before = time.process_time()
        start = time.perf_counter()
        frames = long_text_to_video(model, "a fox", settings, num_clips=args.one, overlap=args.overlap, callback=callback)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_before
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()  # the live-tensor census ran inside the timed run: take its cost off
    live_tensor_mib()
    gc_s = (time.perf_counter() - start) * args.one
    return {
        "clips": args.one,
        "frames": frames.shape[0],
        "wall_s": wall - gc_s,
        "cpu_s": cpu - gc_s,
        "live_mib": live,
        "rss_peak_mib": rss_after / 1024,  # ru_maxrss is in KiB on Linux
        "rss_growth_mib": (rss_after - rss_before) / 1024,
        "output_mib": frames.numel() * frames.element_size() / 2**20,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "device": str(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", default="1,2,4", help="the values of K to run, comma separated")
    parser.add_argument("--width", type=int, default=64, help="UNet model_channels (official 320)")
    parser.add_argument("--vae-width", type=int, default=32, help="VAE ch (official 128)")
    parser.add_argument("--size", default="128x128", help="HxW in pixels (official 320x512)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--overlap", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    add_threads_argument(parser)
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # internal: run one K, print JSON
    args = parser.parse_args()
    print(configure_threads(args.threads))  # each K's process is given the same arguments and environment
    args.height, args.width_px = (int(v) for v in args.size.lower().split("x"))
    if args.one:
        print(json.dumps(one_run(args)))
        return

    rows = []
    for k in (int(v) for v in args.clips.split(",")):
        command = [sys.executable, __file__, "--one", str(k)] + [a for a in sys.argv[1:]]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"K={k} done in {rows[-1]['wall_s']:.1f} s", file=sys.stderr)

    first = rows[0]
    per_clip_1 = first["wall_s"] / first["clips"]
    cpu_per_clip_1 = first["cpu_s"] / first["clips"]
    h, w = args.height // 8, args.width_px // 8
    latent_mib = 4 * args.frames * h * w * 4 / 2**20
    kept = 1 + (math.ceil(args.steps * 0.4) - 1) * args.overlap / args.frames  # entry 0 whole, DSG's other steps M frames
    print(f"device {first['device']}, VideoCrafter2 layout (UNet width {args.width}, VAE ch {args.vae_width}), "
          f"{args.frames} frames at {args.size} per clip, overlap {args.overlap}, {args.steps} DDIM steps with CFG")
    cuda = first["cuda_peak_mib"] is not None
    header = ("| K | frames | wall s | s / clip | / K=1 | CPU s / clip | / K=1 | peak RSS MiB | peak RSS growth MiB "
              "| output MiB | live tensors at each clip's end, MiB |")
    print(header + (" CUDA peak MiB |" if cuda else ""))
    print("|---" * (11 + cuda) + "|")
    for r in rows:
        per_clip = r["wall_s"] / r["clips"]
        live = ", ".join(f"{v:.2f}" for v in r["live_mib"])
        line = (f"| {r['clips']} | {r['frames']} | {r['wall_s']:.2f} | {per_clip:.2f} | {per_clip / per_clip_1:.2f}x | "
                f"{r['cpu_s'] / r['clips']:.2f} | {r['cpu_s'] / r['clips'] / cpu_per_clip_1:.2f}x | {r['rss_peak_mib']:.0f} | {r['rss_growth_mib']:.1f} | "
                f"{r['output_mib']:.1f} | {live} |")
        print(line + (f" {r['cuda_peak_mib']:.0f} |" if cuda else ""))
    print(f"one clip's latents: {latent_mib:.2f} MiB; the sampler's history: about {kept:.2f} of them "
          f"(the official code keeps {args.steps}).")


if __name__ == "__main__":
    main()
