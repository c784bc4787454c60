"""Train the toy base models from scratch: first the VAE, then the text-to-video UNet and text
encoder together, then the image-to-video model from it.

The Action Prism and integration layers are trained afterwards by the project's own trainer
(`python -m echoreel_core.train --config toy`); this module covers what that trainer leaves
frozen. Both stages draw their clips straight from the world's seeded generator (an unbounded
stream of the frames the dataset files hold, without their h264 coding) and run one small loop,
`fit`: AdamW, linear warmup then cosine decay, gradient clipping and an EMA of the weights, which
is what gets saved (a short from-scratch diffusion run samples far better from its EMA).

    python -m echoreel_core.toy.pretrain vae  OUT/vae.safetensors
    python -m echoreel_core.toy.pretrain base OUT/base.safetensors --vae OUT/vae.safetensors
    python -m echoreel_core.toy.pretrain base OUT/base_motion.safetensors --vae OUT/vae.safetensors \
        --init OUT/base.safetensors --phase noisy           # timesteps 500-999 only
    python -m echoreel_core.toy.pretrain base OUT/base_detail.safetensors --vae OUT/vae.safetensors \
        --init OUT/base_motion.safetensors --phase clean --seed 2   # timesteps 0-499 only
    python -m echoreel_core.toy.pretrain i2v OUT/i2v.safetensors --init OUT/base_detail.safetensors

What each stage sees (`DEFAULT_SPLIT`):
    VAE: single frames of clips of the Prism actions (a superset of the base actions; an image
        autoencoder learns shapes and colours, not motion).
    Base: clips of the base actions only (moving left/right/up/down); 25 % of captions drop the
        action and 10 % are empty (classifier-free guidance). Three phases: all timesteps, then
        the noisy half only (MOTION_SCHEDULE), then the clean half only (DETAIL_SCHEDULE).
    I2V: the same clips and captions, each with its first frame (I2V_SCHEDULE, all timesteps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from ..loading.checkpoints import load_video_model, read_state_dict, save_video_model
from ..common.files import atomic_write
from ..models.autoencoder import AutoencoderConfig, AutoencoderKL
from ..models.video_model import VideoModel
from ..models.presets import _from_dict
from ..common.threads import add_threads_argument, configure_threads
from .models import SHIPPED_LATENT_SIDE, TOY_PRESETS, preset_for_vae, toy_i2v_preset
from .world import DEFAULT_SPLIT, ClipSpec, Split, World, clip_caption, render, sample_clip

log = logging.getLogger("echoreel.toy.pretrain")


# ---- the loop ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Schedule:
    steps: int
    lr: float
    warmup: int = 100
    grad_clip: float = 1.0
    ema: float = 0.995
    log_every: int = 50
    timesteps: tuple[int, int] = (0, 1000)  # [first, last) diffusion timesteps drawn (the base stages)


Randomness = random.Random | torch.Generator  # what a stage draws its data and noise from
STATE_EVERY = 100  # steps between a resumable stage's saves (a base step takes 1-3 s on a CPU core)


def fit(params: list[nn.Parameter], loss_fn: Callable[[int], torch.Tensor], schedule: Schedule,
        name: str, state: FitState | None = None) -> list[torch.Tensor]:
    """Minimise loss_fn(step) over `params`; returns the EMA of the parameters (same order).
    With `state`, the run continues from its file when there is one and writes it every
    `state.every` steps, so that a stage cut short goes on bit for bit as if it had not stopped."""
    optimizer = torch.optim.AdamW(params, lr=schedule.lr, betas=(0.9, 0.99), weight_decay=0.0)

    def lr_factor(step: int) -> float:
        if step < schedule.warmup:
            return (step + 1) / schedule.warmup
        progress = (step - schedule.warmup) / max(1, schedule.steps - schedule.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))  # cosine down to lr / 10

    ema = [p.detach().clone() for p in params]
    first = state.load(params, ema, optimizer, schedule, name) if state is not None else 0
    started, running, count = time.perf_counter(), 0.0, 0
    for step in range(first, schedule.steps):
        loss = loss_fn(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name}: the loss is {float(loss)} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, schedule.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr * lr_factor(step)
        optimizer.step()
        decay = min(schedule.ema, (1 + step) / (10 + step))  # a short warmup of the average too
        with torch.no_grad():
            for average, p in zip(ema, params):
                average.lerp_(p.detach(), 1 - decay)
        running, count = running + float(loss.detach()), count + 1
        if (step + 1) % schedule.log_every == 0 or step + 1 == schedule.steps:
            seconds = time.perf_counter() - started
            log.info("%s step %d/%d loss %.5f (%.2f s/step)", name, step + 1, schedule.steps, running / count,
                     seconds / (step + 1 - first))
            running, count = 0.0, 0
        if state is not None and (step + 1) % state.every == 0 and step + 1 < schedule.steps:
            state.save(step + 1, params, ema, optimizer, schedule, name)
    return ema


@dataclasses.dataclass
class FitState:
    """A stage's resumable state in one safetensors file: the parameters, their EMA, AdamW's
    moments, the step, and the state of every random stream the stage draws from (`randomness`,
    in a fixed order, and torch's global one, which dropout uses), which together make the rest
    of the run bit for bit what it would have been."""

    path: Path
    randomness: list[Randomness | ClipStream]
    every: int = dataclasses.field(default_factory=lambda: STATE_EVERY)
    FORMAT = "echoreel-toy-fit-state"

    def save(self, step: int, params, ema, optimizer: torch.optim.Optimizer, schedule: Schedule, name: str) -> None:
        tensors = {}
        for i, (p, average) in enumerate(zip(params, ema)):
            tensors |= {f"param.{i}": p.detach(), f"ema.{i}": average}
            moments = optimizer.state.get(p, {})  # none for a parameter that never had a gradient
            tensors |= {f"{k}.{i}": moments[k] for k in ("exp_avg", "exp_avg_sq") if k in moments}
        tensors["torch_global"] = torch.get_rng_state()  # dropout (the temporal convolutions') draws from it
        python = []
        for k, source in enumerate(self.randomness):
            if isinstance(source, torch.Generator):
                tensors[f"generator.{k}"] = source.get_state()
            else:
                python.append(source.getstate())
        metadata = {"format": self.FORMAT, "stage": name, "step": str(step), "params": str(len(params)),
                    "schedule": json.dumps(dataclasses.asdict(schedule)), "python_random": json.dumps(python)}
        tensors = {k: v.contiguous().clone() for k, v in tensors.items()}
        atomic_write(self.path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    def load(self, params, ema, optimizer: torch.optim.Optimizer, schedule: Schedule, name: str) -> int:
        """Restore from the file if there is one; returns the step to continue from (0: none)."""
        if not self.path.is_file():
            return 0
        tensors, metadata = read_state_dict(self.path)
        expected = {"format": self.FORMAT, "stage": name, "schedule": json.dumps(dataclasses.asdict(schedule)),
                    "params": str(len(params))}
        wrong = {k: (v, metadata.get(k)) for k, v in expected.items() if metadata.get(k) != v}
        if wrong:
            raise ValueError(f"{self.path} is the state of another run: " + "; ".join(
                f"{k} expected {v!r}, found {found!r}" for k, (v, found) in wrong.items())
                + f". Delete it to start {name} afresh, or give the same stage and schedule")
        step = int(metadata["step"])
        with torch.no_grad():
            for i, (p, average) in enumerate(zip(params, ema)):
                p.copy_(tensors[f"param.{i}"])
                average.copy_(tensors[f"ema.{i}"])
                if f"exp_avg.{i}" in tensors:
                    optimizer.state[p] = {"step": torch.tensor(float(step)), "exp_avg": tensors[f"exp_avg.{i}"].clone(),
                                          "exp_avg_sq": tensors[f"exp_avg_sq.{i}"].clone()}
        torch.set_rng_state(tensors["torch_global"])
        python = iter(json.loads(metadata["python_random"]))
        for k, source in enumerate(self.randomness):
            if isinstance(source, torch.Generator):
                source.set_state(tensors[f"generator.{k}"])
            else:
                _set_python_state(source, next(python))
        log.info("%s: continues from step %d of %d (%s)", name, step, schedule.steps, self.path)
        return step


def _load_averages(params: list[nn.Parameter], averages: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, average in zip(params, averages):
            p.copy_(average)


# ---- data ------------------------------------------------------------------------------------------

class ClipStream:
    """An endless seeded stream of clips whose actions cycle through `actions`; its state (the
    generator's and the count) can be saved and restored, for resumable stages (FitState)."""

    def __init__(self, seed: int, actions: tuple[str, ...], world: World):
        self.rng = random.Random(f"echoreel-toy/pretrain/{seed}")
        self.actions, self.world, self.count = actions, world, 0

    def __call__(self) -> ClipSpec:
        action = self.actions[self.count % len(self.actions)]
        self.count += 1
        return sample_clip(self.rng, action, self.world)

    def getstate(self):
        return [self.count, self.rng.getstate()]

    def setstate(self, state) -> None:
        self.count = state[0]
        _set_python_state(self.rng, state[1])


def _set_python_state(source: random.Random | ClipStream, state) -> None:
    """Restore a getstate() that went through JSON (its tuples came back as lists)."""
    if isinstance(source, random.Random):
        version, internal, gauss = state
        source.setstate((version, tuple(internal), gauss))
    else:
        source.setstate(state)


def to_model_range(frames: torch.Tensor) -> torch.Tensor:
    """(..., h, w, 3) in [0, 1] -> (..., 3, h, w) in [-1, 1]."""
    return frames.movedim(-1, -3) * 2 - 1


# ---- stage 1: the VAE ----------------------------------------------------------------------------

VAE_SCHEDULE = Schedule(steps=1500, lr=1e-3, warmup=50)
VAE_BATCH = 16
KL_WEIGHT = 1e-6  # as SD's VAE: the posterior stays nearly deterministic, the latent well scaled


def vae_loss(vae: AutoencoderKL, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """L1 + L2 reconstruction of (n, 3, H, W) frames through a posterior sample, plus a small KL."""
    mean, logvar = vae.encode_frames(frames)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)
    recon = vae.decode_frames(z)
    kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
    return F.l1_loss(recon, frames) + F.mse_loss(recon, frames) + KL_WEIGHT * kl


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, frames: torch.Tensor) -> float:
    """1 / std of the posterior means: the scale factor that gives the diffusion model unit-variance
    latents (SD's 0.18215 was measured the same way)."""
    mean, _ = vae.encode_frames(frames)
    return float(1.0 / mean.std())


def train_vae(seed: int = 0, schedule: Schedule = VAE_SCHEDULE, world: World = World(),
              split: Split = DEFAULT_SPLIT, latent_side: int = SHIPPED_LATENT_SIDE, state_path: Path | None = None) -> AutoencoderKL:
    """The VAE of the toy over latent_side x latent_side latents (models.TOY_PRESETS); with
    `state_path`, resumable (FitState)."""
    torch.manual_seed(seed)
    config = TOY_PRESETS[latent_side].vae
    vae = AutoencoderKL(config)
    next_clip = ClipStream(seed, split.prism, world)
    frame_rng = random.Random(f"echoreel-toy/vae-frames/{seed}")
    generator = torch.Generator().manual_seed(seed)

    def frames(n: int) -> torch.Tensor:
        picked = [render(next_clip(), world)[frame_rng.randrange(world.frames)] for _ in range(n)]
        return to_model_range(torch.stack(picked))  # (n, 3, H, W)

    params = list(vae.parameters())
    state = FitState(Path(state_path), [next_clip, frame_rng, generator]) if state_path else None
    averages = fit(params, lambda step: vae_loss(vae, frames(VAE_BATCH), generator), schedule, "vae", state)
    _load_averages(params, averages)
    scale = latent_scale(vae, frames(256))
    trained = AutoencoderKL(dataclasses.replace(config, scale_factor=round(scale, 5)))
    trained.load_state_dict(vae.state_dict())
    log.info("vae latent scale factor %.5f", scale)
    return trained.eval()


VAE_FORMAT = "echoreel-toy-vae"


def save_vae(vae: AutoencoderKL, path: str | Path) -> Path:
    """The VAE alone, between the two stages, with its config (trained scale factor included)."""
    tensors = {k: v.contiguous() for k, v in vae.state_dict().items()}
    metadata = {"format": VAE_FORMAT, "config": json.dumps(dataclasses.asdict(vae.config))}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_vae(path: str | Path) -> AutoencoderKL:
    tensors, metadata = read_state_dict(path)
    if metadata.get("format") != VAE_FORMAT:
        raise ValueError(f"{path}: not a toy VAE written by `python -m echoreel_core.toy.pretrain vae`")
    vae = AutoencoderKL(_from_dict(AutoencoderConfig, json.loads(metadata["config"])))
    vae.load_state_dict(tensors)
    return vae.eval()


# ---- stage 2: the base text-to-video model --------------------------------------------------------

BASE_SCHEDULE = Schedule(steps=1500, lr=1e-3, warmup=100)
# then the noisy half only, where a clip's motion is decided: over all timesteps the eps loss is
# dominated by the low-noise detail, and the base model learnt objects well before it learnt to
# move them as its caption says
MOTION_SCHEDULE = Schedule(steps=800, lr=3e-4, warmup=20, timesteps=(500, 1000))
# and last the clean half, where an object gets its outline and its size: after the first two
# phases, generated objects changed size from frame to frame about as much as the reference's
# motion moved them, which the motion measure counts (README, the toy model)
DETAIL_SCHEDULE = Schedule(steps=1200, lr=3e-4, warmup=20, timesteps=(0, 500))
BASE_PHASES = {"all": BASE_SCHEDULE, "noisy": MOTION_SCHEDULE, "clean": DETAIL_SCHEDULE}
# the image-to-video toy, from the finished text-to-video one: the new parts start from scratch
I2V_SCHEDULE = Schedule(steps=1200, lr=5e-4, warmup=50)
BASE_BATCH = 8
# which clips the base models see: "named", the base actions only (moving left/right/up/down, which
# their captions name); "prism", every Prism action, the others captioned by their object only (a
# base that can draw curves and size changes but cannot be prompted into them, the paper's premise).
# Never a held-out action.
BASE_MOTIONS = ("named", "prism")
DROP_ACTION = 0.25  # captions that name only the object
DROP_CAPTION = 0.10  # empty captions: the unconditional branch of classifier-free guidance


def base_captions(spec: ClipSpec, rng: random.Random, split: Split) -> str:
    u = rng.random()
    if u < DROP_CAPTION:
        return ""
    return clip_caption(spec, "none" if u < DROP_CAPTION + DROP_ACTION else "known", split)


def base_actions(motions: str, split: Split) -> tuple[str, ...]:
    if motions not in BASE_MOTIONS:
        raise ValueError(f"motions must be one of {BASE_MOTIONS}, got {motions!r}")
    return split.base if motions == "named" else split.prism


def train_base(vae: AutoencoderKL, seed: int = 0, schedule: Schedule = BASE_SCHEDULE, world: World = World(),
               split: Split = DEFAULT_SPLIT, init: VideoModel | None = None, motions: str = "named",
               state_path: Path | None = None) -> VideoModel:
    """UNet + text encoder on the base actions, from scratch or from `init`, with the VAE frozen; the
    toy preset is the one of the VAE's latent size (models.preset_for_vae)."""
    torch.manual_seed(seed)
    model = VideoModel(dataclasses.replace(preset_for_vae(vae.config), vae=vae.config))
    if init is not None:
        model.load_state_dict(init.state_dict())
    model.vae.load_state_dict(vae.state_dict())
    return _fit_diffusion(model, [model.unet, model.text_encoder], seed, schedule, world, split, "base", motions,
                          state_path)


def train_i2v(t2v: VideoModel, seed: int = 0, schedule: Schedule = I2V_SCHEDULE, world: World = World(),
              split: Split = DEFAULT_SPLIT, motions: str = "named", state_path: Path | None = None) -> VideoModel:
    """The image-to-video toy from the text-to-video one: its UNet, VAE and text encoder, plus the
    image cross-attention, vision tower and Resampler, trained on the base actions conditioned on
    each clip's first frame. `to_v_ip` starts at zero, so training starts from the text-to-video
    model exactly; the text encoder and the VAE stay frozen (the two toys share them)."""
    torch.manual_seed(seed)
    model = VideoModel(toy_i2v_preset(t2v.preset))  # either latent size
    missing, unexpected = model.load_state_dict(t2v.state_dict(), strict=False)
    new_parts = [k for k in missing if not k.startswith(("image_encoder.", "resampler.")) and "_ip." not in k]
    if unexpected or new_parts:
        raise ValueError(f"{t2v.preset.name} is not the text-to-video toy: unexpected {unexpected[:3]}, "
                         f"missing {new_parts[:3]}")
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if "to_v_ip" in name:
                p.zero_()
    return _fit_diffusion(model, [model.unet, model.image_encoder, model.resampler], seed, schedule, world, split,
                          "i2v", motions, state_path)


def _fit_diffusion(model: VideoModel, trained: list[nn.Module], seed: int, schedule: Schedule, world: World,
                   split: Split, name: str, motions: str, state_path: Path | None = None) -> VideoModel:
    """The eps loss on clips of `base_actions(motions)` with the base captions; an I2V model also sees
    each clip's first frame (a mid-grey image where the caption is empty: the unconditional
    branch, as `VideoModel.encode_image(None)`)."""
    preset = model.preset
    model.requires_grad_(False).eval()
    next_clip = ClipStream(seed + 1, base_actions(motions, split), world)
    caption_rng = random.Random(f"echoreel-toy/base-captions/{seed}")
    generator = torch.Generator().manual_seed(seed)
    tokens: dict[str, torch.Tensor] = {}
    fps = torch.full((BASE_BATCH,), preset.fps)

    def loss(step: int) -> torch.Tensor:
        clips = [next_clip() for _ in range(BASE_BATCH)]
        texts = [base_captions(c, caption_rng, split) for c in clips]
        for text in texts:
            if text not in tokens:
                tokens[text] = model.tokenizer([text], context_length=preset.text.context_length,
                                               pad_token=preset.text.pad_token)[0]
        video = to_model_range(torch.stack([render(c, world) for c in clips])).transpose(1, 2)  # (b, 3, t, H, W)
        with torch.no_grad():
            z0 = model.vae.encode_video(video, generator=generator)  # (b, 4, t, h, w), scaled
        t = torch.randint(*schedule.timesteps, (BASE_BATCH,), generator=generator)
        noise = torch.randn(z0.shape, generator=generator)
        context = model.text_encoder(torch.stack([tokens[x] for x in texts]))  # (b, 77, d)
        if preset.is_i2v:
            unconditional = torch.tensor([not x for x in texts]).view(-1, 1, 1, 1)
            first = video[:, :, 0].masked_fill(unconditional, 0.0)  # (b, 3, H, W)
            image = model.resampler(model.image_encoder(model.image_encoder.preprocess(first)))  # (b, 16, d)
            context = torch.cat([context, image], dim=1)
        eps = model.unet(model.schedule.q_sample(z0, t, noise), t, context, fps=fps)
        return F.mse_loss(eps, noise)

    params = [p for part in trained for p in part.parameters()]
    for part in trained:
        part.requires_grad_(True).train()
    state = FitState(Path(state_path), [next_clip, caption_rng, generator]) if state_path else None
    averages = fit(params, loss, schedule, name, state)
    _load_averages(params, averages)
    return model.requires_grad_(False).eval()


# ---- command line ----------------------------------------------------------------------------------

def state_file(out: str | Path) -> Path:
    """Where a resumable stage writing `out` keeps its state (FitState)."""
    out = Path(out)
    return out.with_name(out.name + ".state.safetensors")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m echoreel_core.toy.pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("vae", "base", "i2v"))
    parser.add_argument("out", help="the safetensors file to write")
    parser.add_argument("--vae", help="base stage: the VAE written by the vae stage")
    parser.add_argument("--init", help="base stage: continue from this base model (the noisy and clean phases); "
                                       "i2v stage: the text-to-video toy to start from")
    parser.add_argument("--phase", choices=tuple(BASE_PHASES), default="all",
                        help="base stage: the timesteps trained on: all (from scratch), noisy (500-999) or "
                             "clean (0-499)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default: vae 1500; base all 1500, noisy 800, "
                                                  "clean 1200; i2v 1200)")
    parser.add_argument("--motions", choices=BASE_MOTIONS, default="named",
                        help="base and i2v stages: named: the four moves the captions name (default); prism: also "
                             "every other Prism action, captioned by its object only (never a held-out action)")
    parser.add_argument("--latent-side", type=int, choices=sorted(TOY_PRESETS), default=SHIPPED_LATENT_SIDE,
                        help="vae stage: the latent grid of 64x64 frames: 16 (f4, the shipped toy; default) or 8 "
                             "(f8, the first toy); the later stages follow the VAE they are given")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true",
                        help="write the stage's state to OUT.state.safetensors every 100 steps and continue from it "
                             "if it is there (bit for bit as an uncut run); removed once OUT is written")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    if args.stage == "base" and not args.vae:
        parser.error("the base stage needs --vae (the file the vae stage wrote)")
    if args.stage == "base" and (args.phase == "all") == bool(args.init):
        parser.error("the all phase starts from scratch; the noisy and clean phases need --init")
    if args.stage == "i2v" and not args.init:
        parser.error("the i2v stage needs --init (the finished text-to-video toy)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    log.info("%s", configure_threads(args.threads))
    started = time.perf_counter()
    state_path = state_file(args.out) if args.resume else None
    if args.stage == "vae":
        schedule = dataclasses.replace(VAE_SCHEDULE, steps=args.steps or VAE_SCHEDULE.steps)
        save_vae(train_vae(args.seed, schedule, latent_side=args.latent_side, state_path=state_path), args.out)
    elif args.stage == "i2v":
        schedule = dataclasses.replace(I2V_SCHEDULE, steps=args.steps or I2V_SCHEDULE.steps)
        save_video_model(train_i2v(load_video_model(args.init), args.seed, schedule, motions=args.motions,
                                   state_path=state_path), args.out)
    else:
        default = BASE_PHASES[args.phase]
        schedule = dataclasses.replace(default, steps=args.steps or default.steps)
        init = load_video_model(args.init) if args.init else None
        model = train_base(load_vae(args.vae), args.seed, schedule, init=init, motions=args.motions,
                           state_path=state_path)
        save_video_model(model, args.out)
    if state_path is not None:
        state_path.unlink(missing_ok=True)
    log.info("wrote %s in %.1f min", args.out, (time.perf_counter() - started) / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
