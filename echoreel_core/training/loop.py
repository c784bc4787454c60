"""The training run: `Trainer` builds it from a config, `fit()` is the loop.

The loop, as nanoGPT's: take micro-batches from the loader until a step's worth is there, make
one optimizer step (learner.py), log it (log.py), save every `save_every` steps (state.py),
validate every `validation.every` steps (validation.py), and save at the end. The building blocks
around it: the data and its caches (data.py, batches.py), processes and what they agree on at
start (distributed.py, agreement.py), the start-up memory check (memory.py).

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
(common/threads.py): --threads N, else OMP_NUM_THREADS, else the cores this process may use divided by
the number of processes torchrun starts on the node (LOCAL_WORLD_SIZE), so that the ranks of one
node do not oversubscribe its cores (torchrun's own OMP_NUM_THREADS=1 default counts as unset;
pass --threads 1 for one thread per rank).

A run cannot corrupt itself across machines: at every start and resume all ranks agree in one
all-gather on the output folder (rank 0 writes a marker every rank must read: a folder per node is
refused), the configuration, the dataset, the base model, the resumed checkpoint's step and
sha256 and the data position (agreement.py); a failure on one rank stops every rank
(distributed.together); every collective gives up after train.timeout_s (300 s), and rank 0's
saves and validation are waited for by watching a counter it moves, so a frozen or lost node ends
the run with one line naming the last checkpoint, which stays the last good one.

Memory: `--estimate-memory` counts a training step on fake tensors (memory.py), and a run
whose estimate exceeds the device's free memory is refused at start with the settings that would
fit. The frozen base is on every GPU and AdamW keeps two fp32 states per trained weight, so the
EchoReel part is not small: VideoCrafter2's 0.77 B trained parameters take 2.9 GiB of weights,
2.9 of gradients and 5.7 of AdamW states. Per GPU under DDP with bf16 and checkpointing,
VideoCrafter2 needs about 22 GiB at batch 1 and LVDM about 22 GiB at batch 4; without
checkpointing no shipped preset fits 80 GB above batch 1 (README table). optim.offload=true moves
the AdamW states to host memory. FSDP or DeepSpeed ZeRO are not wired in; to add FSDP, wrap
`TrainModule.echoreel` (not the frozen base) with `torch.distributed.fsdp.fully_shard` instead of
DDP and gather a full state dict on rank 0 in `state.capture()`; DeepSpeed would take
`TrainModule` with the same parameters and replace the optimizer, scaler and checkpoint code.

Outputs (train.output_dir): `config.yaml` (resolved, paths absolute), `checkpoints/step_N.pt` plus the
`checkpoints/latest` pointer (written atomically; see state.py), `echoreel.safetensors`
(the weights the ComfyUI node loads, refreshed at each save and at the end), `train_log.csv`
(step, loss, lr, grad norm, samples/s), `tensorboard/` when TensorBoard is installed, and
`validation/step_N_k.mp4`: reference | without EchoReel | with EchoReel. A write that fails
(read-only folder, full disk) ends the run with one line naming the file and the reason (exit
status 2); the last good checkpoint and export are left as they were.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from tqdm import tqdm

from ..loading.checkpoints import DTYPES, load_video_model
from ..models.video_model import VideoModel
from .agreement import agree_on_start
from .batches import Batches, data_cache
from .config import ConfigError
from .data import DatasetError, PairDataset, Sample, Skip, StreamSampler, VideoSpec, collate, load_entries
from .distributed import (DistInfo, gather_objects, init_distributed, is_distributed, main_works_alone, seed_globals,
                          together, wrap_ddp)
from .learner import Learner, build_echoreel
from .log import TrainLog
from .memory import check_memory
from .state import prepare_output_folder, restore, save
from .validation import validate

log = logging.getLogger("echoreel_core.train")


@dataclass
class TrainResult:
    step: int
    loss: float | None
    skipped: dict[int, Skip]
    entries: int


class Trainer(Learner):
    """A training run: the Learner (module, optimizer, one step) plus its data, files and processes."""

    def __init__(self, cfg: DictConfig, model: VideoModel | None = None, dist_info: DistInfo | None = None):
        self.dist = dist_info or init_distributed(cfg.train.device, cfg.train.timeout_s)
        for key, value in (("train.output_dir", cfg.train.output_dir), ("data.json", cfg.data.json),
                           ("model.checkpoint", model is not None or cfg.model.checkpoint)):
            if not value:
                raise ConfigError(f"set {key}=... (see --help)")
        self.out = Path(cfg.train.output_dir)
        # Every block that can fail on one rank alone is `together`: all ranks then stop with it
        # instead of waiting for that rank in the next collective.
        with together("reading the dataset"):
            skips = self._read_entries(cfg)  # a broken dataset JSON fails before a large model is loaded
        resumed = agree_on_start(cfg, self.dist)  # before the base model loads: a refusal costs nothing
        with together("loading the base model"):
            model = load_base_model(cfg, model, self.dist.device)
            self.spec, latent_size = clip_spec(cfg, model)
            cache, keys = data_cache(cfg, model, self.out)
            self.dataset = PairDataset(self.entries, self.spec, cfg.train.seed, cache, keys, model.preset.is_i2v)
            seed_globals(cfg.train.seed)  # the same initial EchoReel on every rank
            echoreel = build_echoreel(cfg, model, latent_size).to(self.dist.device)
            check_memory(cfg, model, echoreel, self.dist)
        batches = Batches(cfg, model, self.dist.device, cache, keys)
        batches.skipped.update({s.index: s for s in skips})
        super().__init__(cfg, model, echoreel, batches, self.dist.device, self.dist.world_size)
        self.step, self.position = 0, 0  # optimizer steps done; global samples consumed
        self.last_loss: float | None = None
        seed_globals(cfg.train.seed + self.dist.rank)
        if resumed.get("state") is not None:
            restore(self, resumed["state"], resumed["path"])
        self.ddp = wrap_ddp(self.module, self.dist)
        with together("preparing the output folder"):
            if self.dist.is_main:
                prepare_output_folder(cfg, self.out)
            self.train_log = TrainLog(self.out, self.step, self.dist.is_main)

    def _read_entries(self, cfg: DictConfig) -> list[Skip]:
        entries, skips = load_entries(cfg.data.json)
        if self.dist.is_main:
            for skip in skips:
                log.warning(skip.message())
        if not entries:
            raise DatasetError(f"{cfg.data.json}: no usable entry ({len(skips)} skipped)")
        self.entries, self.total_entries = entries, len(entries) + len(skips)
        return skips

    def loader(self) -> torch.utils.data.DataLoader:
        """The samples from the current position to max_steps, this rank's share of each batch."""
        accumulation = self.cfg.train.grad_accumulation
        sampler = StreamSampler(self.cfg.train.batch_size, self.dist.rank, self.dist.world_size,
                                self.position, (self.cfg.train.max_steps - self.step) * accumulation)
        workers = self.cfg.data.num_workers
        return torch.utils.data.DataLoader(self.dataset, batch_size=self.cfg.train.batch_size, sampler=sampler,
                                           collate_fn=collate, num_workers=workers,
                                           prefetch_factor=2 if workers else None)

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

    @torch.no_grad()
    def evaluate(self, positions: list[int]) -> float:
        """The loss on the samples at these stream positions, with their fixed noise (no update)."""
        try:
            return float(self.forward(self.batches.prepare([self.dataset[p] for p in positions])))
        finally:
            self.module.detach()  # the next training forward attaches again

    def fit(self) -> TrainResult:
        cfg = self.cfg.train
        if self.dist.is_main:
            log.info("training %s EchoReel parameters (%d entries, global batch %d) from step %d to %d",
                     f"{sum(p.numel() for p in self.params):,}", len(self.entries), self.global_batch, self.step,
                     cfg.max_steps)
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.dist.is_main, desc="train",
                   dynamic_ncols=True)
        pending, started, saved_at = [], time.perf_counter(), self.step
        try:
            for samples in self.loader():
                pending.append(samples)
                if len(pending) < cfg.grad_accumulation:
                    continue
                metrics = self.train_step(pending)
                pending = []
                now = time.perf_counter()
                metrics["samples_per_s"] = self.global_batch / max(now - started, 1e-9)
                started = now
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    self.train_log.row(self.step, metrics, len(self.batches.skipped))
                if self.step % cfg.save_every == 0:
                    save(self)
                    saved_at = self.step
                if self.cfg.validation.every and self.step % self.cfg.validation.every == 0:
                    with main_works_alone(self.dist, cfg.timeout_s, f"the validation of step {self.step}"):
                        validate(self)
            if saved_at != self.step:
                save(self)
        finally:
            bar.close()
            self.module.detach()  # the caller's model is left as it was given
        return self.finish()

    def finish(self) -> TrainResult:
        skipped = {}
        for part in gather_objects(self.batches.skipped):
            skipped.update(part)
        if self.dist.is_main:
            kinds = {}
            for s in skipped.values():
                kinds[s.kind] = kinds.get(s.kind, 0) + 1
            detail = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
            log.info("done at step %d; skipped %d of %d entries%s", self.step, len(skipped), self.total_entries,
                     f" ({detail})" if detail else "")
        self.train_log.close()
        if is_distributed():
            dist.barrier()
        return TrainResult(self.step, self.last_loss, skipped, self.total_entries)


def load_base_model(cfg: DictConfig, model: VideoModel | None, device: torch.device) -> VideoModel:
    """The frozen base model: model.checkpoint loaded (or `model` moved) in the training dtype."""
    precision = cfg.train.precision
    dtype = DTYPES[cfg.model.dtype or ("fp32" if precision == "fp32" else precision)]
    if model is None:
        model = load_video_model(cfg.model.checkpoint, dtype=dtype, device=device)
    else:
        model = model.to(device=device, dtype=dtype)
    if cfg.model.expect and not model.preset.name.startswith(cfg.model.expect):
        raise ConfigError(f"this configuration is for {cfg.model.expect} models; the base model is {model.preset.name}")
    model.requires_grad_(False).eval()
    return model


def clip_spec(cfg: DictConfig, model: VideoModel) -> tuple[VideoSpec, tuple[int, int]]:
    """How the training clips are read (data.*, the model's size by default) and their latent (h, w)."""
    preset = model.preset
    height, width = cfg.data.height or preset.height, cfg.data.width or preset.width
    f = model.vae.downscale_factor
    multiple = f * 2 ** (len(preset.unet.channel_mult) - 1)
    if height % multiple or width % multiple:
        raise ConfigError(f"data.height/width must be multiples of {multiple} for {preset.name}, got {height}x{width}")
    spec = VideoSpec(cfg.data.frames, cfg.data.stride, cfg.data.start, height, width, cfg.data.resize_mode,
                     cfg.data.short_videos)
    return spec, (height // f, width // f)


def train(cfg: DictConfig, model: VideoModel | None = None) -> TrainResult:
    """Train as configured; `model` replaces model.checkpoint (tests, notebooks)."""
    return Trainer(cfg, model=model).fit()
