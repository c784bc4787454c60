"""The toy's held-out motion fidelity with Apply EchoReel's mask over half the frame.

    python bench/masked_motion.py --pairs 4 --steps 20 --threads 1

For each held-out pair (toy.world's "eval" split, seed 0, as toy.evaluate writes it) the prompt is
sampled four times with the same seed through the native MODEL and ComfyUI's KSampler (dpmpp_2m,
karras, cfg 7.5): without EchoReel, with it everywhere, and with a MASK over the left and over the
right half of the frame. The tracker (echoreel_core/toy/metrics.py) gives each video's motion
cosine with the reference. "inside" is the run whose mask covers the half in which the object of
the unmasked EchoReel run spends most of its frames (its centroid's mean x), "outside" the run
masked to the other half: the motion should follow the reference inside and not outside.

ComfyUI is the test-only copy (.comfyui/ComfyUI), imported as the tests do.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
for path in (str(ROOT), str(ROOT / "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)

from comfyui_env import import_pack_in_process  # noqa: E402

from echoreel_core.common.threads import add_threads_argument, configure_threads  # noqa: E402

RUNS = ("without", "everywhere", "left", "right")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--out", help="a JSON file for the per-pair numbers")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    print(configure_threads(args.threads), file=sys.stderr)
    import_pack_in_process()
    import comfy.sample
    from comfy.model_patcher import ModelPatcher

    from comfyui_echoreel_pack.echoreel_core.loading.checkpoints import load_video_model
    from comfyui_echoreel_pack.echoreel_core.training.data import load_entries
    from comfyui_echoreel_pack.echoreel_core.echoreel.features import Reference, action_features, encode_reference
    from comfyui_echoreel_pack.echoreel_core.echoreel.weights import load_echoreel
    from comfyui_echoreel_pack.echoreel_core.pipelines.generate import decode_to_frames
    from comfyui_echoreel_pack.echoreel_core.toy import metrics
    from comfyui_echoreel_pack.echoreel_core.toy.models import TOY_ECHOREEL_FILE, TOY_MODEL_FILE, shipped
    from comfyui_echoreel_pack.echoreel_core.toy.world import World, write_dataset
    from comfyui_echoreel_pack.echoreel_core.video_io import frames_to_model_input, read_video_frames
    from comfyui_echoreel_pack.nodes.echoreel_nodes import ApplyEchoReel
    from comfyui_echoreel_pack.nodes.model import native_model

    core = load_video_model(shipped(TOY_MODEL_FILE)).eval()
    echoreel = load_echoreel(shipped(TOY_ECHOREEL_FILE)).eval()
    native = native_model(core.preset, core.schedule, core.unet.state_dict(), "fp32")
    weights = ModelPatcher(echoreel, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_dataset(tmp, "eval", args.pairs, seed=0)
        entries, _ = load_entries(data)
        extras = json.loads(pathlib.Path(data).read_text())
        world = World(**json.loads((pathlib.Path(data).parent / "world.json").read_text())["world"])
        half = torch.zeros(1, world.height, world.width)
        half[:, :, : world.width // 2] = 1
        masks = {"left": half, "right": 1 - half}
        for i, entry in enumerate(entries[: args.pairs]):
            started = time.perf_counter()
            reference, _, _ = read_video_frames(entry.reference, num_frames=world.frames, stride=world.stride,
                                                size=(world.height, world.width))
            ref_track = metrics.track(reference, colours=world.colours, shapes=world.shapes)
            with torch.no_grad():
                latents = encode_reference(core.vae, frames_to_model_input(reference), torch.Generator().manual_seed(i))
                prompt, negative = core.encode_text([entry.prompt]), core.encode_text([""])
                features = action_features(echoreel, prompt, negative,
                                           [Reference(latents, core.encode_text([entry.caption]))])
            f = core.vae.downscale_factor
            latent = torch.zeros(1, 4, world.frames, world.height // f, world.width // f)
            seed = 1234 + i
            cosines, tracks = {}, {}
            for run in RUNS:
                model = native if run == "without" else ApplyEchoReel.execute(
                    native, weights, features, 1.0, 0.0, 1.0, mask=masks.get(run)).args[0]
                with torch.no_grad():
                    samples = comfy.sample.sample(
                        model, comfy.sample.prepare_noise(latent, seed), args.steps, args.cfg, "dpmpp_2m", "karras",
                        [[prompt, {"fps": core.preset.fps}]], [[negative, {"fps": core.preset.fps}]], latent,
                        seed=seed, disable_pbar=True)
                    frames = decode_to_frames(core, samples * core.preset.vae.scale_factor)
                tracks[run] = metrics.track(frames, colours=world.colours, shapes=world.shapes)
                cosines[run] = metrics.motion_cosine(tracks[run], ref_track)
            xs = [d.x for d in tracks["everywhere"] if d is not None]
            side = "left" if xs and statistics.mean(xs) < world.width / 2 else "right"
            other = "right" if side == "left" else "left"
            row = {"pair": i, "action": extras[i]["action"], "object_side": side, **cosines,
                   "inside": cosines[side], "outside": cosines[other]}
            rows.append(row)
            print(f"{i + 1}/{args.pairs} {row['action']}: without {cosines['without']:.3f} everywhere "
                  f"{cosines['everywhere']:.3f} inside ({side}) {row['inside']:.3f} outside {row['outside']:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    means = {k: statistics.mean(r[k] for r in rows) for k in ("without", "everywhere", "inside", "outside")}
    print(json.dumps({"pairs": len(rows), "steps": args.steps, "mean_motion_cosine": means}, indent=1))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps({"rows": rows, "means": means}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
