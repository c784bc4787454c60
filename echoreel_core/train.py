"""`python -m echoreel_core.train`: train the Action Prism and the Action Integration layers.

    python -m echoreel_core.train --config lvdm model.checkpoint=lvdm.ckpt \\
        data.json=dataset/U91.json train.output_dir=runs/lvdm
    torchrun --nproc_per_node 4 -m echoreel_core.train --config lvdm ...     # one node, 4 GPUs
    python -m echoreel_core.train --config runs/lvdm/config.yaml --resume latest
    python -m echoreel_core.train --config videocrafter2 --estimate-memory  # GiB per GPU, nothing loaded

This module is the trainer and the command line; the configuration (schema, presets, --help
text) is train_config.py, processes and seeds are distributed.py, checkpoints train_state.py, the
ranks' agreement train_agreement.py, the memory estimate train_memory.py, the optimizer
train_optim.py.

What it does, as the official training (docs: echoreel-official.md section 4) unless noted:
- The base model (UNet, VAE, text encoder) is frozen; only the EchoReel Prism and integration
  layers train. Their dead official parts (the Sout head, `video_inject_attn3`,
  `video_inject_norm6`) are kept so the weights load everywhere but are not trained: nothing
  computes them, so they would receive no gradient anyway.
- Loss: eps-prediction MSE at t ~ U{0..T-1}, x_t = schedule.q_sample(z0, t, eps) (with
  VideoCrafter2/I2V/1024's scale_arr), z0 = 0.18215 * a VAE posterior sample drawn at every step;
  the reference latents are such a sample too and are never noised; no CFG dropout.
- AdamW (lr 1e-4, betas (0.9, 0.9), weight decay 0.03), optional linear warmup, optional
  gradient clipping, fp32/bf16/fp16 (autocast; fp16 with a GradScaler), gradient checkpointing
  of the UNet blocks and Prism layers, gradient accumulation.
- Each sample attends only to its own reference (the official `repeat` mixes them in a batch).

Randomness: a sample's noise, timestep and posterior samples come from a generator seeded by
(seed, the sample's position in the global sample stream), and the stream is one seeded
permutation per epoch that the ranks shard. So a run's numbers do not depend on the number of
processes (2 GPUs with batch 2 = 1 GPU with batch 4, up to float rounding), and resuming
continues exactly. The global RNGs (Python, NumPy, torch) are seeded with seed + rank and
saved per rank in every checkpoint, for anything else that might draw from them.

Scale-out: under torchrun (one node or many: --nnodes with a c10d rendezvous, README "Several
machines"), DistributedDataParallel over the EchoReel parameters (gradients as views into its
buckets), nccl on CUDA and gloo on CPU; rank 0 logs, validates and saves. CPU threads
(threads.py): --threads N, else OMP_NUM_THREADS, else the cores this process may use divided by
the number of processes torchrun starts on the node (LOCAL_WORLD_SIZE), so that the ranks of one
node do not oversubscribe its cores (torchrun's own OMP_NUM_THREADS=1 default counts as unset;
pass --threads 1 for one thread per rank).

A run cannot corrupt itself across machines: at every start and resume all ranks agree in one
all-gather on the output folder (rank 0 writes a marker every rank must read: a folder per node is
refused), the configuration, the dataset, the base model, the resumed checkpoint's step and
sha256 and the data position (train_agreement.py); a failure on one rank stops every rank
(distributed.together); every collective gives up after train.timeout_s (300 s), and rank 0's
saves and validation are waited for by watching a counter it moves, so a frozen or lost node ends
the run with one line naming the last checkpoint, which stays the last good one.

Memory: `--estimate-memory` counts a training step on fake tensors (train_memory.py), and a run
whose estimate exceeds the device's free memory is refused at start with the settings that would
fit. The frozen base is on every GPU and AdamW keeps two fp32 states per trained weight, so the
EchoReel part is not small: VideoCrafter2's 0.77 B trained parameters take 2.9 GiB of weights,
2.9 of gradients and 5.7 of AdamW states. Per GPU under DDP with bf16 and checkpointing,
VideoCrafter2 needs about 22 GiB at batch 1 and LVDM about 22 GiB at batch 4; without
checkpointing no shipped preset fits 80 GB above batch 1 (README table). optim.offload=true moves
the AdamW states to host memory. FSDP or DeepSpeed ZeRO are not wired in; to add FSDP, wrap
`TrainModule.echoreel` (not the frozen base) with `torch.distributed.fsdp.fully_shard` instead of
DDP and gather a full state dict on rank 0 in `Trainer.state()`; DeepSpeed would take
`TrainModule` with the same parameters and replace the optimizer, scaler and checkpoint code.

Outputs (train.output_dir): `config.yaml` (resolved, paths absolute), `checkpoints/step_N.pt` plus the
`checkpoints/latest` pointer (written atomically; see train_state.py), `echoreel.safetensors`
(the weights the ComfyUI node loads, refreshed at each save and at the end), `train_log.csv`
(step, loss, lr, grad norm, samples/s), `tensorboard/` when TensorBoard is installed, and
`validation/step_N_k.mp4`: reference | without EchoReel | with EchoReel. A write that fails
(read-only folder, full disk) ends the run with one line naming the file and the reason (exit
status 2); the last good checkpoint and export are left as they were.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .loading.checkpoints import DTYPES, CheckpointError, load_video_model
from .training.data import (CacheKeys, Clip, DatasetError, Entry, PairDataset, Sample, Skip, StreamSampler, TensorCache,
                   VideoSpec, collate, fingerprint, load_entries)
from .training.distributed import (DistInfo, PeerFailedError, gather_objects, init_distributed, is_distributed, is_lost_peer,
                          main_works_alone, sample_seed, seed_globals, together)
from .echoreel.features import Reference, action_features, encode_reference
from .echoreel.weights import EchoReel, EchoReelConfig, load_echoreel, save_echoreel
from .common.files import WriteError, atomic_write, make_folder, temporaries
from .pipelines.memory import GiB, InsufficientMemoryError, available_bytes
from .models import unet_lvdm, unet_videocrafter
from .models.video_model import VideoModel
from .pipelines.generate import EchoReelGuidance, SamplingSettings, image_to_video, text_to_video
from .common.threads import add_threads_argument, configure_threads
from .training.agreement import AgreementError, agree, claim_output_folder, file_sha256, run_fields
from .training.config import ConfigError, key_help, load_config, preset_configs
from .training.memory import check_training_fits, memory_report, presets_to_estimate
from .training.optim import build_adamw
from .training.state import (TrainStateError, load_checkpoint, remove_stale_temporaries, resolve_checkpoint,
                          rng_state, save_checkpoint, set_rng_state)
from .video_io import VideoReadError, frames_to_model_input, read_video_frames, stack_side_by_side, write_video
from .training import state as train_state

log = logging.getLogger("echoreel_core.train")
DEAD_PARAMETERS = ("latent_to_S.", ".video_inject_attn3.", ".video_inject_norm6.")  # official, never computed


# ---- the trained module ----------------------------------------------------------------------

class TrainModule(nn.Module):
    """The EchoReel parameters plus the loss, one module for DDP.

    The frozen base model is kept outside the module tree (DDP would otherwise broadcast it and
    track it); the integration layers reach the UNet through an Attachment made once."""

    def __init__(self, echoreel: EchoReel, model: VideoModel):
        super().__init__()
        self.echoreel = echoreel
        self.__dict__["base"] = model  # not a submodule
        self.attachment = None

    def attach(self) -> None:
        if self.attachment is None:
            self.attachment = self.echoreel.attach(self.base.preset, self.base.unet)

    def detach(self) -> None:
        """Leave the base model exactly as it was (validation sampling attaches on its own)."""
        if self.attachment is not None:
            self.attachment.detach()
            self.attachment = None

    def forward(self, z0, reference, timesteps, noise, prompt, caption, context, fps) -> torch.Tensor:
        """z0, reference, noise: (b, c, t, h, w); timesteps, fps: (b,); prompt, caption: (b, 77, D);
        context: the UNet's (b, L, D) (the prompt, plus image tokens for I2V). Returns the eps MSE."""
        model = self.base
        self.attach()
        # one reference per sample: the batched Prism call is prism_tokens(prompt_i, [reference_i]) for each i
        tokens = self.echoreel.video_inject_process(torch.cat([prompt, caption], dim=1), reference)  # (b, t, tout)
        self.attachment.bind(tokens, frames_per_reference=reference.shape[2])
        x_t = model.schedule.q_sample(z0, timesteps, noise)
        eps = model.unet(x_t, timesteps, context, fps=fps)
        return F.mse_loss(eps.float(), noise.float())


def set_gradient_checkpointing(model: VideoModel, echoreel: EchoReel, enabled: bool) -> None:
    for module in model.unet.modules():
        if isinstance(module, (unet_lvdm.Block, unet_videocrafter.Block)):
            module.gradient_checkpointing = enabled
    echoreel.video_inject_process.gradient_checkpointing = enabled


def trainable_parameters(echoreel: EchoReel) -> list[nn.Parameter]:
    """Every EchoReel parameter but the official dead ones, which are frozen."""
    params = []
    for name, p in echoreel.named_parameters():
        dead = any(part in f".{name}" for part in DEAD_PARAMETERS)
        p.requires_grad_(not dead)
        if not dead:
            params.append(p)
    return params


def build_echoreel(cfg: DictConfig, model: VideoModel, latent_size: tuple[int, int]) -> EchoReel:
    """A fresh EchoReel sized to the model and the training clips (latent_size = the clips' (h, w)
    after the VAE), or the `echoreel.init` weights, which must fit both."""
    overrides = dict(cfg.echoreel.prism)
    overrides.setdefault("latent_height", latent_size[0])
    overrides.setdefault("latent_width", latent_size[1])
    if cfg.echoreel.init:
        echoreel = load_echoreel(cfg.echoreel.init)
        echoreel.check_fits(model.preset, model.unet)
        prism = echoreel.config.prism
        if (prism.latent_height, prism.latent_width) != latent_size:
            f = model.vae.downscale_factor
            raise ConfigError(
                f"{cfg.echoreel.init}: these weights take reference latents of {prism.latent_height}x"
                f"{prism.latent_width}, the training clips give {latent_size[0]}x{latent_size[1]}: set "
                f"data.height={prism.latent_height * f} data.width={prism.latent_width * f}"
            )
        if echoreel.config.query_positions != cfg.echoreel.query_positions:
            raise ConfigError(f"{cfg.echoreel.init}: these weights have query_positions="
                              f"{echoreel.config.query_positions}, the config says {cfg.echoreel.query_positions}")
        return echoreel
    try:
        config = EchoReelConfig.for_preset(model.preset, **overrides)
    except TypeError as error:
        raise ConfigError(f"echoreel.prism: {error}") from error
    return EchoReel(dataclasses.replace(config, query_positions=cfg.echoreel.query_positions))


# ---- the trainer -----------------------------------------------------------------------------

@dataclass
class TrainResult:
    step: int
    loss: float | None
    skipped: dict[int, Skip]
    entries: int


class Trainer:
    """Builds everything from a config, then `fit()` trains; small methods, one job each."""

    def __init__(self, cfg: DictConfig, model: VideoModel | None = None, dist_info: DistInfo | None = None):
        self.cfg = cfg
        self.dist = dist_info or init_distributed(cfg.train.device, cfg.train.timeout_s)
        for key, value in (("train.output_dir", cfg.train.output_dir), ("data.json", cfg.data.json),
                           ("model.checkpoint", model is not None or cfg.model.checkpoint)):
            if not value:
                raise ConfigError(f"set {key}=... (see --help)")
        self.out = Path(cfg.train.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.precision = cfg.train.precision
        # Every block that can fail on one rank alone is `together`: all ranks then stop with it
        # instead of waiting for that rank in the next collective.
        with together("reading the dataset"):
            self._read_entries()  # a broken dataset JSON fails before a large model is loaded
        resumed = self._agree_on_start()  # before the base model loads: a refusal costs nothing
        with together("loading the base model"):
            self.model = self._build_model(model)
            self._build_data()
            seed_globals(cfg.train.seed)  # the same initial EchoReel on every rank
            self.echoreel = build_echoreel(cfg, self.model, self.latent_size).to(self.dist.device)
            self._check_memory()
        self._build_module()
        self._build_optimizer()
        self.step, self.position = 0, 0  # optimizer steps done; global samples consumed
        self.skipped, self._noted = {s.index: s for s in self.startup_skips}, set()
        self.last_loss: float | None = None
        seed_globals(cfg.train.seed + self.dist.rank)
        if resumed.get("state") is not None:
            self.apply_state(resumed["state"], resumed["path"])
        self.ddp = None
        if self.dist.world_size > 1:
            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            # the gradients live in DDP's all-reduce buckets instead of beside them: one copy less
            self.ddp = nn.parallel.DistributedDataParallel(self.module, device_ids=ids, gradient_as_bucket_view=True)
        with together("preparing the output folder"):
            self._setup_outputs()

    def _agree_on_start(self) -> dict:
        """Every rank reads the checkpoint it would resume from, then all ranks compare what they are
        about to train in one all-gather (train_agreement.py); returns this rank's resume (state, path)."""
        several = self.dist.world_size > 1
        shared = claim_output_folder(self.out, self.dist) if several else True
        resumed = self._read_resume() if shared else {}  # a folder of its own: nothing there to trust
        if several:
            agree(run_fields(self.cfg, self.dist, shared, resumed))
        if resumed.get("error"):
            raise TrainStateError(resumed["error"])  # the same on every rank, or agree() had stopped them
        return resumed

    def _read_resume(self) -> dict:
        """The checkpoint train.resume names, loaded on the CPU, its step, position and (with several
        ranks, to compare) the sha256 of its bytes; a failure is returned for the agreement."""
        if not self.cfg.train.resume:
            return {}
        try:
            path = resolve_checkpoint(self.cfg.train.resume, self.ckpt_dir)
            if path is None:
                return {}
            state = load_checkpoint(path)
            digest = file_sha256(path) if self.dist.world_size > 1 else None
        except (TrainStateError, OSError) as error:
            return {"error": str(error)}
        return {"path": path, "state": state, "step": state["step"], "position": state["position"], "sha256": digest}

    def _check_memory(self) -> None:
        """Refuse a run whose estimated per-GPU peak exceeds what the device has, before training
        allocates anything (train_memory.check_training_fits)."""
        device = self.dist.device
        limit = available_bytes(device) if self.cfg.train.check_memory else None
        if limit is None:
            return
        resident = sum(t.untyped_storage().nbytes() for module in (self.model, self.echoreel)
                       for t in [*module.parameters(), *module.buffers()])
        # CPU processes of one node share its memory (the GPU ones have a device each)
        share = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
        try:
            estimate = check_training_fits(self.cfg, self.model.preset, self.dist.world_size, device, limit // share,
                                           resident)
        except InsufficientMemoryError:
            raise
        except Exception as error:  # noqa: BLE001 - an estimate that cannot run must not stop a run that may fit
            log.warning("the memory estimate failed (%s: %s); memory not checked", type(error).__name__, error)
            return
        if self.dist.is_main:
            log.info("memory: about %.2f GiB per process at the peak (see --estimate-memory); %.1f GiB free",
                     estimate.total / GiB, limit / GiB)

    @classmethod
    def shell(cls, cfg: DictConfig, model: VideoModel, echoreel: EchoReel, device: torch.device,
              foreach: bool | None = None) -> "Trainer":
        """A Trainer around the given modules without files, data or processes: the memory estimate
        (train_memory.py) runs its `update` on fake tensors. Its GradScaler is off (a real one reads
        a value back, which fake tensors have not; unscaling works in place and costs no memory)."""
        self = cls.__new__(cls)
        self.cfg, self.dist, self.precision = cfg, DistInfo(0, 1, 0, device), cfg.train.precision
        self.model, self.echoreel, self.cache, self.keys, self.ddp = model, echoreel, None, None, None
        self.fps = cfg.model.fps or model.preset.fps
        self.skipped, self._noted = {}, set()
        self._build_module()
        self._build_optimizer(foreach)
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)
        return self

    # -- building --

    def _build_module(self) -> None:
        set_gradient_checkpointing(self.model, self.echoreel, self.cfg.train.gradient_checkpointing)
        self.params = trainable_parameters(self.echoreel)
        self.module = TrainModule(self.echoreel, self.model)
        self.global_batch = self.cfg.train.batch_size * self.cfg.train.grad_accumulation * self.dist.world_size

    def _build_model(self, model: VideoModel | None) -> VideoModel:
        cfg = self.cfg
        dtype = DTYPES[cfg.model.dtype or ("fp32" if self.precision == "fp32" else self.precision)]
        if model is None:
            model = load_video_model(cfg.model.checkpoint, dtype=dtype, device=self.dist.device)
        else:
            model = model.to(device=self.dist.device, dtype=dtype)
        if cfg.model.expect and not model.preset.name.startswith(cfg.model.expect):
            raise ConfigError(f"this configuration is for {cfg.model.expect} models; the base model is {model.preset.name}")
        model.requires_grad_(False).eval()
        return model

    def _read_entries(self) -> None:
        entries, skips = load_entries(self.cfg.data.json)
        if self.dist.is_main:
            for skip in skips:
                log.warning(skip.message())
        if not entries:
            raise DatasetError(f"{self.cfg.data.json}: no usable entry ({len(skips)} skipped)")
        self.entries, self.startup_skips, self.total_entries = entries, skips, len(entries) + len(skips)

    def _build_data(self) -> None:
        cfg, preset, entries = self.cfg, self.model.preset, self.entries
        height, width = cfg.data.height or preset.height, cfg.data.width or preset.width
        f = self.model.vae.downscale_factor
        multiple = f * 2 ** (len(preset.unet.channel_mult) - 1)
        if height % multiple or width % multiple:
            raise ConfigError(f"data.height/width must be multiples of {multiple} for {preset.name}, got {height}x{width}")
        self.latent_size = (height // f, width // f)
        self.spec = VideoSpec(cfg.data.frames, cfg.data.stride, cfg.data.start, height, width,
                              cfg.data.resize_mode, cfg.data.short_videos)
        self.cache = None
        keys = None
        if cfg.data.cache:
            self.cache = TensorCache(cfg.data.cache_dir or self.out / "cache")
            m = self.model
            keys = CacheKeys(fingerprint(m.vae), fingerprint(m.text_encoder),
                             fingerprint(m.image_encoder) + fingerprint(m.resampler) if preset.is_i2v else None)
        self.dataset = PairDataset(entries, self.spec, cfg.train.seed, self.cache, keys, preset.is_i2v)
        self.keys = keys
        self.fps = cfg.model.fps or preset.fps

    def _build_optimizer(self, foreach: bool | None = None) -> None:
        o = self.cfg.optim
        self.optimizer = build_adamw(self.params, o, offload=o.offload, foreach=foreach)
        warmup = o.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        )
        self.scaler = torch.amp.GradScaler(self.dist.device.type, enabled=self.precision == "fp16")

    def _setup_outputs(self) -> None:
        self.csv_path, self.writer = self.out / "train_log.csv", None
        if not self.dist.is_main:
            return
        make_folder(self.out)
        for tmp in temporaries(self.out, "echoreel.safetensors"):  # an export cut short
            tmp.unlink(missing_ok=True)
        removed = remove_stale_temporaries(self.ckpt_dir)
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted save", removed)
        text = OmegaConf.to_yaml(self.cfg)
        atomic_write(self.out / "config.yaml", lambda tmp: tmp.write_text(text, encoding="utf-8"))
        self._truncate_csv()
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional
        except Exception:  # noqa: BLE001 - TensorBoard is not installed: CSV only
            log.info("TensorBoard is not installed; logging to %s only", self.csv_path)
        else:
            self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step + 1)

    def _truncate_csv(self) -> None:
        """Drop rows past the resumed step (a killed run may have logged steps it never saved)."""
        if not self.csv_path.is_file():
            return
        with open(self.csv_path, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= self.step]

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows(kept)

        if len(kept) != len(rows):
            atomic_write(self.csv_path, write)  # never a log cut in half

    # -- one batch --

    def autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=dtype)

    @torch.no_grad()
    def _moments(self, clip: Clip) -> tuple[torch.Tensor, torch.Tensor]:
        """A clip's VAE posterior (mean, logvar), each (c, t, h, w) float32: cached, or encoded now."""
        device = self.dist.device
        if clip.cached is not None:
            return clip.cached["mean"].to(device, torch.float32), clip.cached["logvar"].to(device, torch.float32)
        frames = rearrange(clip.pixels, "c t h w -> t c h w")
        moments = [self.model.vae.encode_frames(chunk) for chunk in frames.split(16)]  # as encode_video
        mean = torch.cat([m for m, _ in moments]).float().permute(1, 0, 2, 3)  # (c, t, h, w)
        logvar = torch.cat([lv for _, lv in moments]).float().permute(1, 0, 2, 3)
        if clip.key is not None:
            dtype = DTYPES[self.cfg.data.cache_dtype]
            self.cache.put("video", clip.key, {"mean": mean.to(dtype), "logvar": logvar.to(dtype)})
            if self.cfg.data.cache_dtype != "fp32":  # train on what later epochs will read back
                mean, logvar = mean.to(dtype).float(), logvar.to(dtype).float()
        return mean, logvar

    @torch.no_grad()
    def _image_tokens(self, clip: Clip) -> torch.Tensor:
        """I2V: the CLIP image tokens (16, D) of the target's first frame."""
        if clip.cached is not None:
            return clip.cached["image"].to(self.dist.device, self.model.dtype)
        tokens = self.model.encode_image(clip.pixels[:, 0][None])[0]  # (3, H, W) frame -> (16, D)
        if clip.key is not None:
            self.cache.put("image", self.keys.image_key(clip.key), {"image": tokens})
        return tokens

    @torch.no_grad()
    def _text(self, text: str, cached: dict[str, torch.Tensor]) -> torch.Tensor:
        """A prompt's text context (77, D): cached, or encoded now (one text per call, as cached)."""
        if text in cached:
            return cached[text].to(self.dist.device, self.model.dtype)
        context = self.model.encode_text([text])[0]
        if self.cache is not None:
            self.cache.put("text", self.keys.text_key(text), {"context": context})
        return context

    def _posterior_sample(self, mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """0.18215 * (mean + std * noise), the noise drawn frames-as-batch (t, c, h, w) as encode_video."""
        c, t, h, w = mean.shape
        noise = torch.randn((t, c, h, w), generator=generator).permute(1, 0, 2, 3).to(mean.device)
        return self.model.vae.config.scale_factor * (mean + torch.exp(0.5 * logvar) * noise)

    def prepare(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        """Samples -> the TrainModule's tensors on the device; draws each sample's randomness."""
        self._report(samples)
        rows = {k: [] for k in ("z0", "reference", "timesteps", "noise", "prompt", "caption", "context")}
        first, last = self.cfg.train.timesteps
        for s in samples:
            generator = torch.Generator().manual_seed(sample_seed(self.cfg.train.seed, s.position))
            z0 = self._posterior_sample(*self._moments(s.target), generator)  # (c, t, h, w)
            rows["z0"].append(z0)
            rows["reference"].append(self._posterior_sample(*self._moments(s.reference), generator))
            rows["timesteps"].append(torch.randint(first, last, (), generator=generator))
            rows["noise"].append(torch.randn(z0.shape, generator=generator).to(z0.device))
            prompt = self._text(s.prompt, s.texts)
            rows["prompt"].append(prompt)
            rows["caption"].append(self._text(s.caption, s.texts))
            rows["context"].append(torch.cat([prompt, self._image_tokens(s.target)]) if self.model.preset.is_i2v else prompt)
        batch = {k: torch.stack(v).to(self.dist.device) for k, v in rows.items()}
        batch["fps"] = torch.full((len(samples),), self.fps, dtype=torch.long, device=self.dist.device)
        return batch

    def _report(self, samples: list[Sample]) -> None:
        """Log each newly skipped entry and each short-video note once."""
        for s in samples:
            for skip in s.skips:
                if skip.index not in self.skipped:
                    self.skipped[skip.index] = skip
                    log.warning(skip.message())
            for note in s.notes:
                if note not in self._noted:
                    self._noted.add(note)
                    log.warning(note)

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.autocast():
            return (self.ddp or self.module)(**batch)

    @torch.no_grad()
    def evaluate(self, positions: list[int]) -> float:
        """The loss on the samples at these stream positions, with their fixed noise (no update)."""
        try:
            return float(self._forward(self.prepare([self.dataset[p] for p in positions])))
        finally:
            self.module.detach()  # the next training forward attaches again

    def sync_context(self, last: bool):
        """DDP all-reduces the gradients in the last micro-batch of a step only."""
        return self.ddp.no_sync() if (self.ddp is not None and not last) else contextlib.nullcontext()

    def update(self, micro_batches: list[list[Sample]]) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step over the micro-batches: (mean loss, gradient norm) as tensors, and the lr.

        Tensor work only (no value is read back, no collective but DDP's own), so that the memory
        estimate runs exactly this on fake tensors. The gradients are freed when it returns:
        validation sampling and saving, which come between steps, never hold them."""
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.dist.device)
        for i, samples in enumerate(micro_batches):
            batch = self.prepare(samples)
            with self.sync_context(i == len(micro_batches) - 1):
                loss = self._forward(batch)
                self.scaler.scale(loss / len(micro_batches)).backward()
            total += loss.detach()
            del batch, loss  # before the next micro-batch's tensors are made
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.grad_clip
        grads = [p.grad for p in self.params if p.grad is not None]
        if clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        del grads
        lr = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / len(micro_batches), grad_norm, lr

    def train_step(self, micro_batches: list[list[Sample]]) -> dict[str, float]:
        """One optimizer step over `grad_accumulation` micro-batches; returns what is logged."""
        loss, grad_norm, lr = self.update(micro_batches)
        self.step += 1
        self.position += self.global_batch
        if is_distributed():
            dist.all_reduce(loss)
            loss /= dist.get_world_size()
        self.last_loss = float(loss)
        return {"loss": self.last_loss, "lr": lr, "grad_norm": float(grad_norm)}

    # -- state --

    def state(self) -> dict:
        """Everything a resume needs, as tensors and plain values (weights_only-loadable)."""
        return {
            "format": train_state.FORMAT,
            "step": self.step,
            "position": self.position,  # global samples consumed: where the data stream resumes
            "echoreel": self.echoreel.state_dict(),
            "echoreel_config": self.echoreel.config.to_json(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": gather_objects(rng_state()),  # one per rank
            "skipped": sorted({i for ranks in gather_objects(sorted(self.skipped)) for i in ranks}),
            "world_size": self.dist.world_size,
            "config": OmegaConf.to_yaml(self.cfg),
        }

    def load_state(self, path: Path) -> None:
        self.apply_state(load_checkpoint(path), path)

    def apply_state(self, state: dict, path: Path) -> None:
        """Continue from a loaded checkpoint: weights, optimizer, schedule, scaler, step, data position, RNGs."""
        if state["echoreel_config"] != self.echoreel.config.to_json():
            raise TrainStateError(f"{path}: trained an EchoReel of another configuration than this run's")
        self.echoreel.load_state_dict(state["echoreel"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.position = state["step"], state["position"]
        rngs = state["rng"]
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        else:
            log.warning("%s was saved by %d processes, this run has %d: global RNGs reseeded",
                        path, len(rngs), self.dist.world_size)
        self.skipped.update({i: Skip(i, "", "earlier", "skipped before the resume") for i in state["skipped"]
                             if i not in self.skipped})
        if self.dist.is_main:
            log.info("resumed from %s at step %d", path, self.step)

    def save(self) -> None:
        state = self.state()  # every rank takes part in the gathers
        with main_works_alone(self.dist, self.cfg.train.timeout_s, f"the save of step {self.step}"):
            if self.dist.is_main:
                log.info("saving checkpoint step %d", self.step)
                path = save_checkpoint(self.ckpt_dir, self.step, state, self.cfg.train.keep_checkpoints)
                save_echoreel(self.echoreel, self.out / "echoreel.safetensors", DTYPES[self.cfg.echoreel.export_dtype])
                log.info("saved %s and %s", path, self.out / "echoreel.safetensors")

    # -- validation --

    def validation_entries(self) -> list[Entry]:
        v = self.cfg.validation
        if v.json:
            entries, skips = load_entries(v.json)
            for skip in skips:
                log.warning("validation %s", skip.message())
        else:  # every (n/20)-th entry, as the official validation subset
            entries = self.entries[:: max(1, len(self.entries) // 20)]
        return entries[: v.num_samples]

    @torch.no_grad()
    def validate(self) -> list[Path]:
        """Rank 0: reference | without EchoReel | with EchoReel videos for a few entries."""
        if not self.dist.is_main:
            return []
        self.optimizer.zero_grad(set_to_none=True)  # sampling's activations, not the gradients (update() frees them too)
        self.module.detach()  # sampling attaches EchoReel by itself
        self.echoreel.eval()
        written = []
        try:
            for k, entry in enumerate(self.validation_entries()):
                try:
                    written.append(self._validation_video(k, entry))
                except (VideoReadError, OSError, ValueError) as error:
                    log.warning("validation entry %d: %s; skipped", entry.index, error)
        finally:
            self.echoreel.train()
        return written

    def _validation_video(self, k: int, entry: Entry) -> Path:
        v, spec, model = self.cfg.validation, self.spec, self.model
        read = dict(num_frames=spec.frames, stride=spec.stride, start=spec.start, size=(spec.height, spec.width),
                    resize_mode=spec.resize_mode)
        reference, _, _ = read_video_frames(entry.reference, **read)  # (t, h, w, 3) in [0, 1]
        settings = SamplingSettings(height=spec.height, width=spec.width, frames=spec.frames, fps=self.fps,
                                    steps=v.steps, cfg=v.cfg or model.preset.cfg, eta=v.eta, seed=v.seed)
        with self.autocast():
            latents = encode_reference(model.vae, frames_to_model_input(reference), torch.Generator().manual_seed(v.seed))
            features = action_features(self.echoreel, model.encode_text([entry.prompt]),
                                       model.encode_text([v.negative_prompt]),
                                       [Reference(latents, model.encode_text([entry.caption]))])
            guide = EchoReelGuidance(self.echoreel, features, strength=v.strength)
            if model.preset.is_i2v:
                image = read_video_frames(entry.target, **{**read, "num_frames": 1})[0][0]  # (h, w, 3)
                run = lambda echo: image_to_video(model, image, entry.prompt, settings, v.negative_prompt, echoreel=echo)  # noqa: E731
            else:
                run = lambda echo: text_to_video(model, entry.prompt, settings, v.negative_prompt, echoreel=echo)  # noqa: E731
            without, with_echoreel = run(None), run(guide)
        path = self.out / "validation" / f"step_{self.step:08d}_{k}.{v.format}"
        make_folder(path.parent)
        write_video(path, stack_side_by_side(reference, without.float(), with_echoreel.float()), fps=v.video_fps)
        return path

    # -- the loop --

    def loader(self) -> torch.utils.data.DataLoader:
        accumulation = self.cfg.train.grad_accumulation
        sampler = StreamSampler(self.cfg.train.batch_size, self.dist.rank, self.dist.world_size,
                                self.position, (self.cfg.train.max_steps - self.step) * accumulation)
        workers = self.cfg.data.num_workers
        return torch.utils.data.DataLoader(self.dataset, batch_size=self.cfg.train.batch_size, sampler=sampler,
                                           collate_fn=collate, num_workers=workers,
                                           prefetch_factor=2 if workers else None)

    def log_row(self, metrics: dict[str, float]) -> None:
        if not self.dist.is_main:
            return
        new = not self.csv_path.is_file()
        try:  # appended to, not replaced: a failure is reported as atomic_write's are
            with open(self.csv_path, "a", newline="") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(["step", "loss", "lr", "grad_norm", "samples_per_s", "skipped"])
                writer.writerow([self.step, f"{metrics['loss']:.6g}", f"{metrics['lr']:.6g}",
                                 f"{metrics['grad_norm']:.6g}", f"{metrics['samples_per_s']:.4g}", len(self.skipped)])
        except OSError as error:
            raise WriteError(self.csv_path, error) from error
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"train/{key}", value, self.step)

    def fit(self) -> TrainResult:
        cfg = self.cfg.train
        global_batch = self.global_batch
        if self.dist.is_main:
            log.info("training %s EchoReel parameters (%d entries, global batch %d) from step %d to %d",
                     f"{sum(p.numel() for p in self.params):,}", len(self.entries), global_batch, self.step,
                     cfg.max_steps)
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.dist.is_main, desc="train",
                   dynamic_ncols=True)
        pending, started = [], time.perf_counter()
        saved_at = self.step
        try:
            for samples in self.loader():
                pending.append(samples)
                if len(pending) < cfg.grad_accumulation:
                    continue
                metrics = self.train_step(pending)
                pending = []
                now = time.perf_counter()
                metrics["samples_per_s"] = global_batch / max(now - started, 1e-9)
                started = now
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    self.log_row(metrics)
                if self.step % cfg.save_every == 0:
                    self.save()
                    saved_at = self.step
                if self.cfg.validation.every and self.step % self.cfg.validation.every == 0:
                    with main_works_alone(self.dist, cfg.timeout_s, f"the validation of step {self.step}"):
                        self.validate()
            if saved_at != self.step:
                self.save()
        finally:
            bar.close()
            self.module.detach()  # the caller's model is left as it was given
        return self.finish()

    def finish(self) -> TrainResult:
        skipped = {}
        for part in gather_objects(self.skipped):
            skipped.update(part)
        if self.dist.is_main:
            kinds = {}
            for s in skipped.values():
                kinds[s.kind] = kinds.get(s.kind, 0) + 1
            detail = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
            log.info("done at step %d; skipped %d of %d entries%s", self.step, len(skipped), self.total_entries,
                     f" ({detail})" if detail else "")
            if self.writer is not None:
                self.writer.close()
        if is_distributed():
            dist.barrier()
        return TrainResult(self.step, self.last_loss, skipped, self.total_entries)


def train(cfg: DictConfig, model: VideoModel | None = None) -> TrainResult:
    """Train as configured; `model` replaces model.checkpoint (tests, notebooks)."""
    return Trainer(cfg, model=model).fit()


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
    checkpoints = Path(cfg.train.output_dir) / "checkpoints"
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
