"""Rebuild every shipped toy file from scratch, on a CPU: `python -m echoreel_core.toy.retrain`.

The files go to --out, by default a folder inside --work, so that a trial run never overwrites
the files the pack ships: pass `--out echoreel_core/toy/shipped` to replace those.

Stages (each skipped when its output already exists in --work, so a cut-short run goes on where
it stopped; a stage cut short resumes where it stopped: the VAE, base and I2V stages from the
state they keep beside their outputs every 100 steps, the EchoReel stages from their trainer's
latest checkpoint):
    1. data: the Prism training pairs (2000, seed 0) as mp4 files + the official JSON;
    2. vae: the AutoencoderKL (`toy.pretrain vae`);
    3. base: UNet + text encoder on the base actions (`toy.pretrain base`), then on their noisy
       half only (`--phase noisy`), where captions must steer the motion, then on their clean
       half only (`--phase clean`), where objects get their outline and size;
    4. echoreel: the Action Prism and integration layers over the final base, by the project's
       trainer (`python -m echoreel_core.train --config toy`);
    5. i2v: the image-to-video toy from the final base (`toy.pretrain i2v`);
    6. echoreel_i2v: EchoReel for it, from the text-to-video toy's (`--config toy_i2v`);
    7. ship: both base models (fp16) and both EchoReel weights (fp32) into --out (default
       --work/shipped), laid out as the shipped folder, with a reference video of a held-out
       action for the demo, a first frame for the image-to-video examples and that reference's
       motion saved for the prompt "a red circle" (`python -m echoreel_core.motion encode`);
    8. evaluate: `toy.evaluate` of each toy on 70 held-out pairs, reports into --work/eval and
       --work/eval_i2v.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import sys
import time
from pathlib import Path

import torch

from ..loading.checkpoints import load_video_model, save_video_model
from ..echoreel.weights import load_echoreel, save_echoreel
from ..common.threads import add_threads_argument, configure_threads
from ..train import main as train_main
from . import evaluate, pretrain
from ..motion.cli import main as motion_main
from .models import (SHIPPED_LATENT_SIDE, TOY_ECHOREEL_FILE, TOY_FIRST_FRAME_FILE, TOY_I2V_ECHOREEL_FILE,
                     TOY_I2V_MODEL_FILE, TOY_MODEL_FILE, TOY_MOTION_CAPTION, TOY_MOTION_FILE, TOY_MOTION_PROMPT,
                     TOY_PRESETS, TOY_REFERENCE_FILE)
from ..video_io import write_video
from .world import ClipSpec, World, render, sample_clip, write_dataset

log = logging.getLogger("echoreel.toy.retrain")

PRISM_PAIRS = 2000
DEMO_REFERENCE_SEED = 7
DETAIL_SEED = 2  # the clean phase draws a clip stream of its own (the first two phases share seed 0's)


def _demo_reference(world: World) -> ClipSpec:
    return sample_clip(random.Random(DEMO_REFERENCE_SEED), "orbit_cw", world, colour="blue", shape="square")


def write_demo_reference(path: Path, world: World = World()) -> Path:
    """A held-out action (orbiting clockwise) of a blue square: what the demo imitates."""
    spec = _demo_reference(world)
    return write_video(path, render(spec, world, world.file_frames), world.file_fps)


def write_first_frame(path: Path, world: World = World()) -> Path:
    """The image-to-video examples' first frame: a red circle where the demo reference's orbit starts."""
    spec = dataclasses.replace(_demo_reference(world), colour="red", shape="circle")
    return write_video(path, render(spec, world)[:1], world.fps)


def finished(export: Path) -> Path:
    """The mark of a finished EchoReel stage, next to its export: the trainer refreshes the export
    at every save, so its presence alone does not say the run reached its last step (a cut-short
    stage runs again and the trainer resumes from its latest checkpoint)."""
    return export.parent / "finished"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m echoreel_core.toy.retrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="toy_work",
                        help="data, checkpoints, logs, the evaluation and (by default) the files to ship")
    parser.add_argument("--out", help="where the files to ship go (default: WORK/shipped); "
                                      "--out echoreel_core/toy/shipped, run from the repository root, replaces "
                                      "the files the pack ships")
    parser.add_argument("--pairs", type=int, default=PRISM_PAIRS, help="Prism training pairs")
    parser.add_argument("--latent-side", type=int, choices=sorted(TOY_PRESETS), default=SHIPPED_LATENT_SIDE,
                        help="the latent grid of the 64x64 frames (default %(default)s, the shipped toy's; "
                             "8: the earlier toy over KL-f8 latents)")
    parser.add_argument("--vae-steps", type=int, default=pretrain.VAE_SCHEDULE.steps)
    parser.add_argument("--base-steps", type=int, default=pretrain.BASE_SCHEDULE.steps)
    parser.add_argument("--motion-steps", type=int, default=pretrain.MOTION_SCHEDULE.steps)
    parser.add_argument("--detail-steps", type=int, default=pretrain.DETAIL_SCHEDULE.steps)
    parser.add_argument("--echoreel-steps", type=int, help="default: the toy training config's")
    parser.add_argument("--i2v-steps", type=int, default=pretrain.I2V_SCHEDULE.steps)
    parser.add_argument("--echoreel-i2v-steps", type=int, help="default: the toy_i2v training config's")
    parser.add_argument("--eval-pairs", type=int, default=evaluate.DEFAULT_PAIRS,
                        help="held-out pairs evaluated at the end (default: %(default)s, 10 of each held-out action)")
    parser.add_argument("--eval-steps", type=int, default=evaluate.EvalSettings.steps)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    log.info("%s", configure_threads(args.threads))
    # the trainer's and the evaluation's main set their own count: hand them the same --threads
    threads = ["--threads", str(args.threads)] if args.threads is not None else []
    work = Path(args.work)
    out = Path(args.out) if args.out else work / "shipped"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    times = {}

    def stage(name: str, done: Path, run) -> None:
        if done.exists():
            log.info("%s: %s exists, skipped", name, done)
            return
        t0 = time.perf_counter()
        run()
        times[name] = time.perf_counter() - t0
        log.info("%s: done in %.1f min", name, times[name] / 60)

    prism_json = work / "data" / "prism" / "prism.json"
    stage("data", prism_json, lambda: write_dataset(work / "data", "prism", args.pairs, seed=0, workers=2))
    vae_file, base_file, motion_file, detail_file = (work / f"{name}.safetensors"
                                                     for name in ("vae", "base", "base_motion", "base_detail"))

    def pretrain_stage(name: str, done: Path, train, save) -> None:
        """A stage of toy.pretrain, which keeps its state beside its output (pretrain.state_file)
        every pretrain.STATE_EVERY steps, so that a run cut short resumes it where it stopped."""
        state = pretrain.state_file(done)

        def run():
            save(train(state), done)
            state.unlink(missing_ok=True)
        stage(name, done, run)

    vae_schedule = dataclasses.replace(pretrain.VAE_SCHEDULE, steps=args.vae_steps)
    base_schedule = dataclasses.replace(pretrain.BASE_SCHEDULE, steps=args.base_steps)
    motion_schedule = dataclasses.replace(pretrain.MOTION_SCHEDULE, steps=args.motion_steps)
    detail_schedule = dataclasses.replace(pretrain.DETAIL_SCHEDULE, steps=args.detail_steps)
    pretrain_stage("vae", vae_file, lambda state: pretrain.train_vae(schedule=vae_schedule, latent_side=args.latent_side,
                                                                       state_path=state),
                   pretrain.save_vae)
    pretrain_stage("base", base_file, lambda state: pretrain.train_base(
        pretrain.load_vae(vae_file), schedule=base_schedule, state_path=state), save_video_model)
    pretrain_stage("base_motion", motion_file, lambda state: pretrain.train_base(
        pretrain.load_vae(vae_file), schedule=motion_schedule, init=load_video_model(base_file), state_path=state),
        save_video_model)
    pretrain_stage("base_detail", detail_file, lambda state: pretrain.train_base(
        pretrain.load_vae(vae_file), DETAIL_SEED, detail_schedule, init=load_video_model(motion_file),
        state_path=state), save_video_model)

    def echoreel_stage(name: str, config: str, model_file: Path, steps: int | None, init: Path | None = None) -> Path:
        """EchoReel layers over `model_file` by the project's trainer, in WORK/name; returns the export."""
        export = work / name / "echoreel.safetensors"

        def run() -> None:
            code = train_main(["--config", config, *threads, f"model.checkpoint={model_file}", f"data.json={prism_json}",
                               f"train.output_dir={export.parent}", "train.resume=auto"]
                              + ([f"echoreel.init={init}"] if init else [])
                              + ([f"train.max_steps={steps}"] if steps else []))
            if code:
                raise SystemExit(f"{name}: EchoReel training failed (exit {code})")
            finished(export).touch()

        stage(name, finished(export), run)
        return export

    echoreel_file = echoreel_stage("echoreel", "toy", detail_file, args.echoreel_steps)
    i2v_file = work / "i2v.safetensors"
    i2v_schedule = dataclasses.replace(pretrain.I2V_SCHEDULE, steps=args.i2v_steps)
    pretrain_stage("i2v", i2v_file, lambda state: pretrain.train_i2v(
        load_video_model(detail_file), schedule=i2v_schedule, state_path=state), save_video_model)
    echoreel_i2v_file = echoreel_stage("echoreel_i2v", "toy_i2v", i2v_file, args.echoreel_i2v_steps, init=echoreel_file)
    shipped_files = (TOY_MODEL_FILE, TOY_ECHOREEL_FILE, TOY_REFERENCE_FILE, TOY_I2V_MODEL_FILE, TOY_I2V_ECHOREEL_FILE,
                     TOY_FIRST_FRAME_FILE, TOY_MOTION_FILE)
    for name in shipped_files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
    save_video_model(load_video_model(detail_file), out / TOY_MODEL_FILE, dtype=torch.float16)
    save_echoreel(load_echoreel(echoreel_file), out / TOY_ECHOREEL_FILE)
    save_video_model(load_video_model(i2v_file), out / TOY_I2V_MODEL_FILE, dtype=torch.float16)
    save_echoreel(load_echoreel(echoreel_i2v_file), out / TOY_I2V_ECHOREEL_FILE)
    write_demo_reference(out / TOY_REFERENCE_FILE)
    write_first_frame(out / TOY_FIRST_FRAME_FILE)
    code = motion_main(["encode", str(out / TOY_REFERENCE_FILE), "--caption", TOY_MOTION_CAPTION, "--prompt",
                        TOY_MOTION_PROMPT, "--model", str(out / TOY_MODEL_FILE), "--echoreel",
                        str(out / TOY_ECHOREEL_FILE), "--out", str(out / TOY_MOTION_FILE), *threads])
    if code:
        raise SystemExit(f"writing {TOY_MOTION_FILE} failed (exit {code})")
    log.info("shipped files written to %s", out)
    for model_file, echoreel_weights, report in ((TOY_MODEL_FILE, TOY_ECHOREEL_FILE, "eval"),
                                                  (TOY_I2V_MODEL_FILE, TOY_I2V_ECHOREEL_FILE, "eval_i2v")):
        evaluate.main(["--model", str(out / model_file), "--echoreel", str(out / echoreel_weights),
                       "--out", str(work / report), "--pairs", str(args.eval_pairs), "--steps", str(args.eval_steps),
                       *threads])
    log.info("retrained in %.1f min (%s)", (time.perf_counter() - started) / 60,
             ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
