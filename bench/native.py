"""The pack's native ComfyUI MODEL against the core UNet, on the CPU.

    python bench/native.py                                   # all three parts
    python bench/native.py --part call --repeats 7 --threads 1
    python bench/native.py --part memory                     # the full-size VideoCrafter2 loads

This measures what a ComfyUI user gets: the UNet inside the native MODEL that Load VideoCrafter Checkpoint returns
(nodes.model.native_model: a BaseModel whose operations ComfyUI picks, with ComfyUI's
optimized_attention), called as BaseModel calls it.

1. One UNet call, CFG-batched (2 rows), no gradients, the same weights and inputs in every case:
   the core UNet (torch.nn, SDPA: what the core, the CLI and toy.evaluate run); the core UNet with
   ComfyUI's attention (isolates the layers from the attention); the native MODEL's diffusion_model
   with fp32 storage as ComfyUI builds it on a CPU (comfy.ops.disable_weight_init: storage and
   compute agree); the same with comfy.ops.manual_cast layers forced (fp32 storage: the cast is a
   no-op, the per-layer casting path is what is timed). Models: the shipped toy (16 frames of 8x8
   latents) and a mid-size VideoCrafter2 layout (--mid-width channels, random weights). After a
   warm-up, --repeats rounds each time one call of every case in turn (a busy machine slows them
   alike); the median of each is compared with the core's in the same run, and its output with
   the core's (largest absolute difference).
2. Loading the full-size VideoCrafter2 UNet (videocrafter2-t2v-512, 1.41 B parameters) as a native
   MODEL with fp8_e4m3fn and with fp16 storage, each in a fresh process: a random fp16 state dict
   is made in memory (what a loader holds after reading an fp16 file), then native_model builds
   and loads the MODEL on the CPU. Reported: the parameters' bytes (exact), and the process's
   resident memory (VmRSS, VmHWM from /proc) above its level after the imports: with the state dict,
   the peak while loading, and after the state dict is freed.
3. fp8 (e4m3fn) and fp16 storage against fp32: one toy-UNet call of the native MODEL (compute in
   fp32 through manual_cast), relative difference ||out - out_fp32|| / ||out_fp32|| and the largest.

ComfyUI is the test-only copy (.comfyui/ComfyUI), imported by tests/comfyui_env.py's helper as the
tests do (--cpu, the torchvision/torchaudio stand-ins); echoreel_core itself never imports it.

Measured (torch 2.13 CPU, one thread, a 2-core machine shared with other jobs, load average 1.5-3.5):
    python bench/native.py --part call --repeats 7 --threads 1          (8 minutes, most of it width 128)
        toy (1.84 M parameters, 2 x 16 frames of 8x8): core 51 ms; core with ComfyUI's attention 1.07x;
        native fp32 (disable_weight_init) 1.08x; native with manual_cast layers 1.13x; every output
        within 9.5e-7 of the core's (max 4.63).
        VideoCrafter2 layout at width 128 (237 M, 2 x 8 frames of 32x32): core 15.4 s; ComfyUI's
        attention 0.92x; native 0.88x; manual_cast 0.90x; within 4.1e-7 (max 0.215).
        The native MODEL costs what ComfyUI's attention (sub-quadratic on a CPU) costs against SDPA,
        slower on the toy's short sequences, faster on 32x32 frames; the comfy.ops layers add nothing
        measurable, manual_cast's per-layer cast path 2-5%.
    python bench/native.py --part memory --threads 1
        fp8_e4m3fn: parameters 1.41 GB; with the 2.83 GB fp16 state dict held the peak is 4.25 GB, 1.61 GB
        after it is freed (30.6 s); fp16: 2.83 GB, peak 5.66 GB, 3.03 GB after (19.1 s). The peak is the
        state dict plus the stored weights (nothing is built in fp32 first): fp8 saves 1.41 GB at the
        peak and after.
    python bench/native.py --part precision --threads 1
        fp8_e4m3fn against fp32: 2.9% relative (max 0.12 of 4.63); fp16: 0 (the toy's weights are fp16 values).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
for path in (str(ROOT), str(ROOT / "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)

from comfyui_env import import_pack_in_process  # noqa: E402

from echoreel_core.common.threads import add_threads_argument, configure_threads  # noqa: E402

GB = 1e9
FULL = "videocrafter2-t2v-512"


def pack_modules():
    """The pack as ComfyUI imports it, and the ComfyUI modules used here."""
    import_pack_in_process()
    import comfy.ops
    from comfy.ldm.modules.attention import optimized_attention

    import comfyui_echoreel_pack.nodes.model as native
    from comfyui_echoreel_pack.echoreel_core.models import presets
    from comfyui_echoreel_pack.echoreel_core.loading.checkpoints import load_video_model
    from comfyui_echoreel_pack.echoreel_core.models.unet_videocrafter import VideoCrafterUNet
    from comfyui_echoreel_pack.echoreel_core.toy.models import TOY_MODEL_FILE, shipped

    return dict(ops=comfy.ops, attention=optimized_attention, native=native, presets=presets,
                VideoCrafterUNet=VideoCrafterUNet, toy=lambda: load_video_model(shipped(TOY_MODEL_FILE)))


def native_unet(m, preset, schedule, state, weight_dtype: str, manual_cast: bool = False):
    """The diffusion_model of native_model(...); manual_cast=True makes BaseModel build it from
    comfy.ops.manual_cast whatever the dtypes (VideoModelConfig.custom_operations, for this call only)."""
    config = m["native"].VideoModelConfig
    config.custom_operations = m["ops"].manual_cast if manual_cast else None
    try:
        return m["native"].native_model(preset, schedule, state, weight_dtype).model.diffusion_model.eval()
    finally:
        config.custom_operations = None


# ---- 1. one UNet call ----------------------------------------------------------------------------

def call_inputs(preset, frames: int, size: int, seed: int = 1):
    """CFG-batched inputs: x (2, 4, frames, size, size), timesteps (2,), context (2, 77, D), fps (2,)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, preset.unet.in_channels, frames, size, size, generator=g)
    context = torch.randn(2, 77, preset.unet.context_dim, generator=g)
    return x, torch.tensor([501, 501]), context, torch.full((2,), preset.fps)


def bench_model(m, label: str, preset, schedule, core_unet, inputs, repeats: int) -> None:
    state = core_unet.state_dict()
    with_comfy_attention = type(core_unet)(preset.unet).eval()
    with_comfy_attention.load_state_dict(state)
    with_comfy_attention.set_attention(m["attention"])
    cases = [
        ("core UNet: torch.nn, SDPA (the core's)", lambda x, t, c, f: core_unet(x, t, c, fps=f)),
        ("core UNet: torch.nn, ComfyUI's attention", lambda x, t, c, f: with_comfy_attention(x, t, c, fps=f)),
    ]
    for name, forced in (("native MODEL fp32: disable_weight_init (ComfyUI's pick)", False),
                         ("native MODEL fp32: manual_cast forced", True)):
        unet = native_unet(m, preset, schedule, state, "fp32", forced)
        layer = type(next(x for x in unet.modules() if isinstance(x, torch.nn.Linear)))
        assert layer.__qualname__.startswith("manual_cast" if forced else "disable_weight_init"), layer
        cases.append((name, lambda x, t, c, f, unet=unet: unet(x, t, context=c, transformer_options={}, fps=f)))
    times = [[] for _ in cases]
    with torch.no_grad():
        outputs = [fn(*inputs) for _, fn in cases]  # warm-up, and the outputs compared
        for _ in range(repeats):
            for i, (_, fn) in enumerate(cases):
                start = time.perf_counter()
                fn(*inputs)
                times[i].append(time.perf_counter() - start)
    medians = [statistics.median(t) for t in times]
    x = inputs[0]
    print(f"\n{label}: {sum(p.numel() for p in core_unet.parameters()) / 1e6:.2f} M parameters, input "
          f"{tuple(x.shape)}, fp32; median of {repeats} alternating rounds")
    print("| UNet | ms per call | / core | max abs diff from core |\n|---|---|---|---|")
    for (name, _), median, out in zip(cases, medians, outputs):
        difference = float((out - outputs[0]).abs().max())
        print(f"| {name} | {median * 1e3:.1f} | {median / medians[0]:.2f} | {difference:.2g} |")
    print(f"(core output: max abs {float(outputs[0].abs().max()):.3g})", flush=True)


def bench_call(args, m) -> None:
    toy = m["toy"]()
    bench_model(m, f"the shipped toy ({toy.preset.name})", toy.preset, toy.schedule, toy.unet.eval(),
                call_inputs(toy.preset, 16, 8), args.repeats)
    if args.mid_width:
        full = m["presets"].PRESETS[FULL]
        preset = dataclasses.replace(full, unet=dataclasses.replace(full.unet, model_channels=args.mid_width))
        torch.manual_seed(0)
        unet = m["VideoCrafterUNet"](preset.unet).eval()
        for p in unet.parameters():  # no zero-initialised layer: every path carries signal
            p.data.normal_(0, 0.05)
        bench_model(m, f"{FULL} layout at model_channels {args.mid_width} (random weights)", preset,
                    preset.official_schedule(), unet, call_inputs(preset, args.frames, args.size // 8), args.repeats)


# ---- 2. loading the full-size UNet ------------------------------------------------------------------

def rss(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))


def load_once(weight_dtype: str) -> dict:
    """In a fresh process: a random fp16 state dict of the full-size UNet, then the native MODEL from it."""
    m = pack_modules()
    preset = m["presets"].PRESETS[FULL]
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in m["VideoCrafterUNet"](preset.unet).state_dict().items()}
    gc.collect()
    base = rss("VmRSS")
    g = torch.Generator().manual_seed(0)
    state = {k: torch.empty(shape, dtype=torch.float16).normal_(0, 0.02, generator=g) for k, shape in shapes.items()}
    with_state = rss("VmRSS") - base
    start = time.perf_counter()
    model = m["native"].native_model(preset, preset.official_schedule(), state, weight_dtype)
    seconds = time.perf_counter() - start
    peak = rss("VmHWM") - base
    loaded = rss("VmRSS") - base
    del state
    gc.collect()
    unet = model.model.diffusion_model
    return {"state": sum(torch.Size(s).numel() * 2 for s in shapes.values()), "with_state": with_state, "peak": peak,
            "loaded": loaded, "after": rss("VmRSS") - base, "seconds": seconds,
            "weights": sum(p.numel() * p.element_size() for p in unet.parameters()),
            "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in unet.parameters()})}


def bench_memory(args) -> None:
    print(f"\nLoading the full-size {FULL} UNet as a native MODEL (CPU), each dtype in a fresh process; resident "
          "memory above the process's after the imports (VmRSS, peak VmHWM)")
    print("| stored in | parameters GB | state dict GB (fp16, held) | resident with it | peak while loading | "
          "resident loaded | after freeing the state dict | seconds |\n|---|---|---|---|---|---|---|---|")
    for dtype in ("fp8_e4m3fn", "fp16"):
        result = subprocess.run([sys.executable, __file__, "--load-once", dtype], capture_output=True, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
        if result.returncode:
            sys.exit(f"loading in {dtype} failed:\n{result.stderr[-3000:]}")
        r = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"| {dtype} ({', '.join(r['dtypes'])}) | {r['weights'] / GB:.2f} | {r['state'] / GB:.2f} | "
              f"{r['with_state'] / GB:.2f} | {r['peak'] / GB:.2f} | {r['loaded'] / GB:.2f} | {r['after'] / GB:.2f} | "
              f"{r['seconds']:.1f} |", flush=True)


# ---- 3. fp8 / fp16 storage against fp32 -----------------------------------------------------------

def bench_precision(args, m) -> None:
    toy = m["toy"]()
    state = toy.unet.state_dict()
    x, t, context, fps = call_inputs(toy.preset, 16, 8)
    outputs = {}
    with torch.no_grad():
        for dtype in ("fp32", "fp16", "fp8_e4m3fn"):
            unet = native_unet(m, toy.preset, toy.schedule, state, dtype)
            outputs[dtype] = unet(x, t, context=context, transformer_options={}, fps=fps)
    ref = outputs["fp32"]
    in_fp16 = all(torch.equal(v, v.half().to(v.dtype)) for v in state.values() if v.is_floating_point())
    print(f"\nStorage dtype against fp32: one native toy-UNet call, input {tuple(x.shape)}, fp32 compute "
          f"(output max abs {float(ref.abs().max()):.3g}; the toy's weights are {'' if in_fp16 else 'not '}"
          "exactly fp16 values: its file is fp16)")
    print("| stored in | relative difference (norm) | max abs diff |\n|---|---|---|")
    for dtype in ("fp16", "fp8_e4m3fn"):
        d = outputs[dtype] - ref
        print(f"| {dtype} | {float(d.norm() / ref.norm()):.2g} | {float(d.abs().max()):.2g} |", flush=True)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--load-once":
        print(json.dumps(load_once(sys.argv[2])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("call", "memory", "precision", "all"), default="all")
    parser.add_argument("--repeats", type=int, default=5, help="alternating timed rounds")
    parser.add_argument("--mid-width", type=int, default=128,
                        help="model_channels of the mid-size VideoCrafter2 layout (official 320; 0 skips it)")
    parser.add_argument("--frames", type=int, default=8, help="frames of the mid-size call")
    parser.add_argument("--size", type=int, default=256, help="frame height and width in pixels of the mid-size call")
    add_threads_argument(parser)
    args = parser.parse_args()
    print(configure_threads(args.threads))
    print(f"torch {torch.__version__}, CPU")
    m = pack_modules() if args.part != "memory" else None
    if args.part in ("call", "all"):
        bench_call(args, m)
    if args.part in ("precision", "all"):
        bench_precision(args, m)
    if args.part in ("memory", "all"):
        bench_memory(args)


if __name__ == "__main__":
    main()
