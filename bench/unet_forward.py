"""Time one UNet forward per family: SDPA (the default backend) against naive softmax attention.

    python bench/unet_forward.py                      # full-width UNets, 8 frames at 256x256
    python bench/unet_forward.py --width 64           # narrower UNets for a quick CPU run
    python bench/unet_forward.py --frames 16 --height 320 --width-px 512 --dtype bf16   # on a GPU

Random weights, batch 1, no gradients; the median of --repeats timed runs after one warm-up.
Ratios are against the naive backend measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from echoreel_core.models.unet_lvdm import LVDMUNet
from echoreel_core.models.unet_videocrafter import VideoCrafterUNet
from echoreel_core.models.presets import PRESETS
from echoreel_core.common.threads import add_threads_argument, configure_threads


def naive_attention(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v with the full logits matrix, as the official non-xformers path."""
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (x.view(b, -1, heads, d).transpose(1, 2) for x in (q, k, v))
    weights = (q @ k.transpose(-1, -2) * d**-0.5).softmax(dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, inner)


def build_unet(name: str, width: int | None, device, dtype):
    config = PRESETS[name].unet
    if width is not None:
        config = dataclasses.replace(config, model_channels=width)
    cls = LVDMUNet if PRESETS[name].family == "lvdm" else VideoCrafterUNet
    with torch.device(device):
        unet = cls(config)
    return unet.to(dtype).eval()


def time_forward(unet, inputs, repeats: int, device) -> float:
    def run():
        with torch.no_grad():
            unet(*inputs[:3], fps=inputs[3])
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=sorted(PRESETS))
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width-px", type=int, default=256)
    parser.add_argument("--width", type=int, default=None, help="model_channels (default: official 320)")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    add_threads_argument(parser)
    args = parser.parse_args()
    print(configure_threads(args.threads))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    print(f"device {device}, {args.dtype}, {args.frames} frames at {args.height}x{args.width_px}, "
          f"model_channels {args.width or 320}, torch {torch.__version__}")
    print("| family | naive ms | SDPA ms | naive / SDPA |\n|---|---|---|---|")
    for name in args.families:
        torch.manual_seed(0)
        unet = build_unet(name, args.width, device, dtype)
        context_dim = unet.config.context_dim
        tokens = 77 + (16 if getattr(unet.config, "image_cross_attention", False) else 0)
        inputs = (
            torch.randn(1, 4, args.frames, args.height // 8, args.width_px // 8, device=device, dtype=dtype),
            torch.tensor([981], device=device),
            torch.randn(1, tokens, context_dim, device=device, dtype=dtype),
            torch.tensor([8], device=device),
        )
        unet.set_attention(naive_attention)
        naive = time_forward(unet, inputs, args.repeats, device)
        unet.set_attention(None)  # back to the default, SDPA
        sdpa = time_forward(unet, inputs, args.repeats, device)
        print(f"| {name} | {naive * 1e3:.0f} | {sdpa * 1e3:.0f} | {naive / sdpa:.2f}x |", flush=True)
        del unet


if __name__ == "__main__":
    main()
