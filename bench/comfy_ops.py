"""The core's models built on ComfyUI's comfy.ops against plain torch.nn, on the CPU.

    python bench/comfy_ops.py                      # both parts: UNet call at width 64, then memory
    python bench/comfy_ops.py --part call --width 320 --frames 16 --size 256   # official width
    python bench/comfy_ops.py --part memory --no-real   # memory from the meta device only

1. One UNet call (VideoCrafter2 layout, batch 1, no gradients), the same weights built five ways:
   torch.nn fp32 (the core's default); comfy.ops.disable_weight_init fp32 (what ComfyUI picks when
   the storage and compute dtypes agree); comfy.ops.manual_cast with fp32, fp16 and fp8 (e4m3fn)
   storage, all computing in fp32. After one warm-up, --repeats rounds each time one call of every
   case in turn; the fastest call of each is compared with torch.nn's, and its output with
   torch.nn's (largest absolute difference).
2. Loading the full-size VideoCrafter2 UNet (1.41 B parameters) with comfy.ops.manual_cast in fp8
   and in fp16: the weights' bytes (meta device, exact), and, unless --no-real, the peak resident
   memory of a fresh process that builds the UNet on the CPU and loads an fp16 safetensors file of
   it (written once into --work, 2.8 GB: what an fp16 checkpoint holds), as ComfyUI loads one.

ComfyUI is the test-only copy (.comfyui/ComfyUI, `bash scripts/setup_comfyui.sh`), imported with
the torchvision/torchaudio stand-ins of tests/comfyui_stubs and --cpu, as tests/comfyui_env.py
does; echoreel_core itself never imports it.

Measured (torch 2.13 CPU, a 2-core machine shared with other jobs: load average 7-8, so single
calls vary by +-30%; outputs are exact):
    python bench/comfy_ops.py --part call --size 128 --repeats 9 --threads 1
        torch.nn fp32 671 ms; disable_weight_init fp32 1.01x; manual_cast fp32 1.07x, fp16 0.99x,
        fp8 1.31x. Same-dtype outputs equal torch.nn's bit for bit; fp16 storage differs by 7e-5,
        fp8 by 0.0087 (output max 0.18). (--width 128: fp8 1.54x, the others within the noise.)
    python bench/comfy_ops.py --part memory --threads 1
        weights fp8 1.41 GB, fp16 2.83 GB (0.50x); loading the fp16 file, peak resident 4.25 GB
        for fp8 and 5.66 GB for fp16, 1.42 and 2.84 GB after: the peak is the weights plus the whole
        fp16 state dict held while loading, as ComfyUI (and load_video_model) read a file whole.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echoreel_core.models.unet_videocrafter import VideoCrafterUNet  # noqa: E402
from echoreel_core.presets import PRESETS  # noqa: E402
from echoreel_core.threads import add_threads_argument, configure_threads  # noqa: E402

GB = 1e9
PRESET = "videocrafter2-t2v-512"


def import_comfy_ops():
    comfyui = pathlib.Path(os.environ.get("ECHOREEL_COMFYUI_DIR", ROOT / ".comfyui" / "ComfyUI"))
    if not (comfyui / "main.py").is_file():
        sys.exit(f"{comfyui} is missing: run `bash scripts/setup_comfyui.sh`")
    for path in (str(comfyui), str(ROOT / "tests" / "comfyui_stubs")):
        if path not in sys.path:
            sys.path.insert(0, path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.ops

    return comfy.ops


# ---- 1. one UNet call ----------------------------------------------------------------------------

def bench_call(args, ops) -> None:
    config = dataclasses.replace(PRESETS[PRESET].unet, model_channels=args.width)
    torch.manual_seed(0)
    reference = VideoCrafterUNet(config).eval()
    for p in reference.parameters():  # no zero-initialised layer: every path carries signal
        p.data.normal_(0, 0.05)
    state = reference.state_dict()
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randn(1, 4, args.frames, args.size // 8, args.size // 8, generator=g), torch.tensor([501]),
              torch.randn(1, 77, config.context_dim, generator=g))
    cases = [("torch.nn (the core's default)", None, torch.float32),
             ("comfy.ops.disable_weight_init", ops.disable_weight_init, torch.float32),
             ("comfy.ops.manual_cast", ops.manual_cast, torch.float32),
             ("comfy.ops.manual_cast", ops.manual_cast, torch.float16),
             ("comfy.ops.manual_cast", ops.manual_cast, torch.float8_e4m3fn)]
    unets = []
    for _, operations, dtype in cases:
        unet = reference if operations is None else VideoCrafterUNet(config, dtype=dtype, operations=operations).eval()
        unet.load_state_dict(state)
        unet.compute_dtype = torch.float32  # as the node layer sets it (ComfyUI's manual-cast dtype)
        unets.append(unet)
    best = [float("inf")] * len(unets)
    with torch.no_grad():
        outputs = [unet(*inputs, fps=8) for unet in unets]  # warm-up, and the outputs compared
        for _ in range(args.repeats):  # rounds alternate the cases, so a busy machine slows them alike
            for i, unet in enumerate(unets):
                start = time.perf_counter()
                unet(*inputs, fps=8)
                best[i] = min(best[i], time.perf_counter() - start)
    print(f"\nOne UNet call: {PRESET} layout, model_channels {args.width}, {args.frames} frames at "
          f"{args.size}x{args.size}, fp32 compute; the fastest of {args.repeats} alternating rounds")
    print("| layers | weights stored in | ms | / torch.nn | max abs diff from torch.nn |\n|---|---|---|---|---|")
    for (label, _, dtype), seconds, out in zip(cases, best, outputs):
        print(f"| {label} | {str(dtype).removeprefix('torch.')} | {seconds * 1e3:.0f} | {seconds / best[0]:.2f} | "
              f"{float((out - outputs[0]).abs().max()):.2g} |")
    print(f"(torch.nn output: max abs {float(outputs[0].abs().max()):.2g})", flush=True)


# ---- 2. loading the full-size UNet ------------------------------------------------------------------

def weight_bytes(dtype: torch.dtype, ops) -> int:
    with torch.device("meta"):
        unet = VideoCrafterUNet(PRESETS[PRESET].unet, dtype=dtype, operations=ops.manual_cast)
    return sum(p.numel() * p.element_size() for p in unet.parameters())


def write_fp16_file(work: pathlib.Path) -> pathlib.Path:
    """The full-size UNet's state dict in fp16 (constant values: what is measured is memory)."""
    from safetensors.torch import save_file

    path = work / "videocrafter2_unet_fp16.safetensors"
    if not path.is_file():
        work.mkdir(parents=True, exist_ok=True)
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in VideoCrafterUNet(PRESETS[PRESET].unet).state_dict().items()}
        tensors = {k: torch.full(shape, 0.01, dtype=torch.float16) for k, shape in shapes.items()}
        save_file(tensors, str(path.with_suffix(".tmp")))
        path.with_suffix(".tmp").rename(path)
    return path


def load_once(dtype_name: str, path: str) -> dict:
    """In a fresh process: build the UNet with manual_cast in `dtype_name` on the CPU and load the file."""
    from safetensors.torch import load_file

    ops = import_comfy_ops()

    def rss(field: str) -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))

    before = rss("VmRSS")
    start = time.perf_counter()
    unet = VideoCrafterUNet(PRESETS[PRESET].unet, dtype=getattr(torch, dtype_name), operations=ops.manual_cast)
    state = load_file(path)
    unet.load_state_dict(state)
    del state
    return {"seconds": time.perf_counter() - start, "peak": rss("VmHWM") - before, "after": rss("VmRSS") - before,
            "weights": sum(p.numel() * p.element_size() for p in unet.parameters())}


def bench_memory(args, ops) -> None:
    print(f"\nLoading the full-size {PRESET} UNet with comfy.ops.manual_cast (CPU)")
    sizes = {name: weight_bytes(getattr(torch, name), ops) for name in ("float8_e4m3fn", "float16")}
    print(f"weights (meta device): fp8 {sizes['float8_e4m3fn'] / GB:.2f} GB, fp16 {sizes['float16'] / GB:.2f} GB "
          f"({sizes['float8_e4m3fn'] / sizes['float16']:.2f}x)")
    if not args.real:
        return
    path = write_fp16_file(pathlib.Path(args.work))
    print(f"from {path} ({path.stat().st_size / GB:.2f} GB, fp16), each in a fresh process; memory above the "
          "process's after imports")
    print("| weights stored in | weights GB | peak resident GB | resident after GB | seconds |\n|---|---|---|---|---|")
    for name in ("float8_e4m3fn", "float16"):
        result = subprocess.run([sys.executable, __file__, "--load-once", name, str(path)], capture_output=True,
                                text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
        r = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['weights'] / GB:.2f} | {r['peak'] / GB:.2f} | {r['after'] / GB:.2f} | "
              f"{r['seconds']:.1f} |", flush=True)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--load-once":
        print(json.dumps(load_once(sys.argv[2], sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("call", "memory", "both"), default="both")
    parser.add_argument("--width", type=int, default=64, help="UNet model_channels for the call (official 320)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="frame height and width in pixels")
    parser.add_argument("--repeats", type=int, default=5, help="alternating timed rounds")
    parser.add_argument("--real", action=argparse.BooleanOptionalAction, default=True,
                        help="also load the full-size UNet for real, in a fresh process per dtype")
    parser.add_argument("--work", default="/tmp/echoreel_bench", help="where the fp16 UNet file is written once")
    add_threads_argument(parser)
    args = parser.parse_args()
    print(configure_threads(args.threads))
    ops = import_comfy_ops()
    print(f"torch {torch.__version__}, CPU")
    if args.part in ("call", "both"):
        bench_call(args, ops)
    if args.part in ("memory", "both"):
        bench_memory(args, ops)


if __name__ == "__main__":
    main()
