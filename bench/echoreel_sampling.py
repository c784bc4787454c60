"""Sampling wall time with EchoReel divided by without, features cached vs recomputed per call.

    python bench/echoreel_sampling.py                 # LVDM layout at 1/5 width, 16 frames 256x256
    python bench/echoreel_sampling.py --width 320 --prism-dim 640 --steps 50   # official sizes (GPU)

All three runs use the same seed, steps and CFG in one process:
- base: the LVDM UNet alone;
- cached: EchoReel as this project runs it (Prism once per branch, k/v once per site);
- recomputed: the official way, the Prism run inside every UNet call on each branch's text.
The reduced default keeps the official proportions (UNet width 320 -> 64, Prism width 640 -> 128,
18 Prism layers) so the Prism still costs several UNet calls, as in the official model.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from echoreel_core.echoreel.features import Reference, action_features, prism_tokens
from echoreel_core.echoreel.weights import EchoReel, EchoReelConfig
from echoreel_core.pipelines.generate import EchoReelGuidance, SamplingSettings, generate_latents, guided_denoiser
from echoreel_core.models.presets import PRESETS
from echoreel_core.models.video_model import VideoModel
from echoreel_core.sampling.ddim import ddim_schedule, randn, sample_ddim
from echoreel_core.common.threads import add_threads_argument, configure_threads


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=64, help="UNet model_channels (official 320)")
    parser.add_argument("--prism-dim", type=int, default=128, help="Prism width (official 640 = 8 x 80)")
    parser.add_argument("--prism-layers", type=int, default=18)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument(
        "--components", action="store_true",
        help="time one batched CFG UNet call without and with EchoReel and one Prism pass, and derive "
        "the ratio for --steps steps (for sizes too slow to sample whole runs on a CPU)",
    )
    add_threads_argument(parser)
    args = parser.parse_args()
    print(configure_threads(args.threads))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]

    base = PRESETS["lvdm-short-t2v"]
    preset = dataclasses.replace(base, unet=dataclasses.replace(base.unet, model_channels=args.width))
    torch.manual_seed(0)
    with torch.device(device):
        model = VideoModel(preset).to(dtype).eval()
    config = EchoReelConfig.for_preset(
        preset, latent_dim=args.prism_dim, head_dim=args.prism_dim // 8, layers=args.prism_layers
    )
    with torch.device(device):
        echoreel = EchoReel(config).to(dtype).eval()
    for p in echoreel.parameters():  # non-zero outputs, as trained weights have
        p.data.normal_(0, 0.02)
    g = torch.Generator().manual_seed(1)
    latent = (4, args.frames, config.prism.latent_height, config.prism.latent_width)
    reference = Reference(torch.randn(1, *latent, generator=g).to(device, dtype), torch.randn(1, 77, 768, generator=g).to(device, dtype))
    prompt, negative = (torch.randn(1, 77, 768, generator=g).to(device, dtype) for _ in range(2))
    settings = SamplingSettings(height=256, width=256, frames=args.frames, fps=8, steps=args.steps, cfg=12.0)

    def run_base():
        generate_latents(model, prompt, negative, settings)

    def run_cached():
        features = action_features(echoreel, prompt, negative, [reference])  # part of the cost
        generate_latents(model, prompt, negative, settings, echoreel=EchoReelGuidance(echoreel, features))

    def run_recomputed():
        attachment = echoreel.attach(preset, model.unet)

        def unet_with_prism(x, t, context, fps=None):
            tokens = torch.cat([prism_tokens(echoreel, prompt, [reference]), prism_tokens(echoreel, negative, [reference])])
            attachment.bind(tokens, args.frames)
            return model.unet(x, t, context, fps=fps)

        generator = torch.Generator().manual_seed(settings.seed)
        x_T = randn((1, *latent[:2], 32, 32), generator, device=device).to(dtype)
        denoise = guided_denoiser(unet_with_prism, prompt, negative, settings.cfg, torch.tensor([8], device=device))
        try:
            sample_ddim(denoise, x_T, ddim_schedule(model.schedule, settings.steps, settings.eta), generator)
        finally:
            attachment.detach()

    if args.components:
        return time_components(args, model, echoreel, preset, prompt, negative, reference, device, dtype)

    with torch.no_grad():
        run_cached()  # warm-up
        times = {name: timed(fn, device) for name, fn in (("base", run_base), ("cached", run_cached), ("recomputed", run_recomputed))}
    print(f"device {device}, {args.dtype}, LVDM UNet width {args.width}, Prism {args.prism_layers}x{args.prism_dim}, "
          f"{args.frames} frames at 256x256, {args.steps} DDIM steps with CFG")
    print("| run | seconds | / base |\n|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.2f} | {seconds / times['base']:.2f}x |")


@torch.no_grad()
def time_components(args, model, echoreel, preset, prompt, negative, reference, device, dtype) -> None:
    """One CFG step is one batched UNet call; a cached run adds two Prism passes once.
    ratio(S) = (S * (unet + integration) + 2 * prism) / (S * unet)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, args.frames, 32, 32, generator=g).to(device, dtype)
    t = torch.tensor([981, 981], device=device)
    context = torch.cat([prompt, negative])
    unet = lambda: model.unet(x, t, context)  # noqa: E731
    unet()  # warm-up
    tokens = torch.cat([prism_tokens(echoreel, p, [reference]) for p in (prompt, negative)])
    base, attached, prism = [], [], []
    for _ in range(2):  # alternate, keep the fastest: a busy machine only ever adds time
        base.append(timed(unet, device))
        with echoreel.attach(preset, model.unet) as attachment:
            attachment.bind(tokens, args.frames)
            attached.append(timed(unet, device))
        prism.append(timed(lambda: prism_tokens(echoreel, prompt, [reference]), device))
    base, attached, prism = min(base), min(attached), min(prism)
    steps = args.steps
    cached = (steps * attached + 2 * prism) / (steps * base)
    recomputed = (steps * (attached + 2 * prism)) / (steps * base)
    print(f"device {device}, {args.dtype}, LVDM UNet width {args.width}, Prism {args.prism_layers}x{args.prism_dim}, "
          f"{args.frames} frames at 256x256, CFG batched")
    print("| component | seconds |\n|---|---|")
    print(f"| UNet call (cond + uncond) | {base:.2f} |\n| same call with EchoReel attached | {attached:.2f} |\n| one Prism pass | {prism:.2f} |")
    print(f"derived for {steps} steps: cached {cached:.3f}x base, Prism recomputed in every call {recomputed:.2f}x base")


if __name__ == "__main__":
    main()
