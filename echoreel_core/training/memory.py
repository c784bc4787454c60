"""How much memory a training run needs per GPU, counted before anything is allocated.

The figure is not a formula. The trainer's own code (`Batches.prepare`, the forward, backward,
gradient clipping and AdamW step: `Learner.update`) runs once on fake tensors (PyTorch's
FakeTensorMode: meta storage, no data, no compute) with the configured model, sizes, batch,
precision and checkpointing, and every storage that exists during the step is counted while it is
alive (pipelines/memory.py's StorageCounter): the frozen base model, the EchoReel weights, AdamW's states, the
gradients, the saved activations and every temporary, at the worst moment. The optimizer states
exist from the start (a first step has created them), so the counted step is any later one.

What a GPU run differs in, and how it is modelled:
- Autocast: the step runs under CPU autocast, with the ops that CUDA autocast computes in fp32
  (group/layer norm, softmax, exp, ...) made to do so too (`cuda_autocast_policy`), so the saved
  activations have the dtypes they have on a GPU. Attention counts as the fused kernel it is
  there (its output and log-sum-exp, not the n x n weights).
- AdamW: torch's default on CUDA is the foreach implementation, whose temporaries (a full copy of
  exp_avg_sq's square root) are counted by running it.
- DDP (world_size > 1): gradient buckets as large as the gradients are allocated up front and each
  gradient becomes a view into them (gradient_as_bucket_view=True, what the trainer uses), as
  DDP's reducer does after every gradient is accumulated.
- Not counted: the CUDA context and cuDNN/cuBLAS workspaces (outside PyTorch's allocator; free
  memory is read after the context exists), and the caching allocator's fragmentation, which is
  why a run needs some headroom above the figure.

At a small size on the CPU the estimate is within a few percent of what the CPU allocator reports
for a real step (tests/test_train_memory.py measures it with the profiler's allocator events).
`check_memory` is the trainer's start-up check: a run whose estimate exceeds the device's free
memory is refused with the settings that would fit.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open

from ..echoreel.integration import position_code
from ..echoreel.weights import EchoReel
from ..loading.checkpoints import DTYPES, FORMAT as VIDEO_MODEL_FORMAT, CheckpointError, read_state_dict
from ..loading.detect import detect_preset
from ..models.presets import PRESETS, ModelPreset
from ..models.video_model import VideoModel
from ..pipelines.memory import GiB, InsufficientMemoryError, StorageCounter, available_bytes, estimate_sampling_memory
from .batches import Batches
from .config import ConfigError
from .data import Clip, Sample
from .distributed import DistInfo
from .learner import Learner, build_echoreel

log = logging.getLogger("echoreel_core.train")

# CUDA autocast runs these in fp32 (aten's autocast_mode.cpp: the fp32 and fp32_set_opt_dtype
# lists); CPU autocast leaves them in the input's dtype. Only ops the models here call on large
# tensors are listed; each takes its tensor arguments in fp32 as CUDA autocast casts them.
CUDA_FP32_OPS = ("group_norm", "layer_norm", "softmax.int", "log_softmax.int", "exp", "log", "rsqrt",
                 "pow.Tensor_Scalar", "reciprocal")


@contextlib.contextmanager
def cuda_autocast_policy():
    """Make CPU autocast follow CUDA autocast's fp32 list, for the duration of the block.

    Registered as AutocastCPU kernels of those aten ops (they have none of their own, CPU autocast
    lets them run in the input's dtype); the library is destroyed on exit, restoring CPU autocast.
    Process-wide while it lasts: the estimate runs on the main thread before training starts."""
    library = torch.library.Library("aten", "IMPL")
    try:
        for name in CUDA_FP32_OPS:
            library.impl(name, _fp32_kernel(name), "AutocastCPU")
        yield
    finally:
        library._destroy()


def _fp32_kernel(name: str):
    base, _, overload = name.partition(".")
    op = getattr(getattr(torch.ops.aten, base), overload or "default")
    below_autocast = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def kernel(*args, **kwargs):
        with torch._C._ExcludeDispatchKeyGuard(below_autocast):
            cast = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != torch.float64
                    else a for a in args]
            return op(*cast, **kwargs)

    return kernel


@dataclass(frozen=True)
class TrainMemoryEstimate:
    """Bytes per GPU; `peak` is the counted worst moment of a training step (buckets included)."""

    preset: str
    batch_size: int
    gradient_checkpointing: bool
    precision: str
    world_size: int
    offload: bool
    frozen_base: int  # every weight of the VideoModel (UNet, VAE, text and image encoders)
    trainable: int  # the EchoReel weights, fp32
    optimizer: int  # AdamW's exp_avg and exp_avg_sq on the device (0 when offloaded to the host)
    gradients: int  # fp32, one per trained weight (under DDP they are views into the buckets)
    ddp_buffers: int  # DDP's gradient buckets (0 for one process)
    peak: int
    validation: int  # rank 0's peak while it samples the validation videos (0: no validation)
    host_optimizer: int = 0  # host RAM that optim.offload uses per process

    @property
    def activations(self) -> int:
        """The rest of the peak: saved activations, the batch, autocast's weight copies, temporaries."""
        held = self.frozen_base + self.trainable + self.optimizer + max(self.gradients, self.ddp_buffers)
        return max(0, self.peak - held)

    @property
    def total(self) -> int:
        return max(self.peak, self.validation)


def base_dtype(cfg: DictConfig) -> torch.dtype:
    """The frozen base model's dtype, as the trainer loads it."""
    precision = cfg.train.precision
    return DTYPES[cfg.model.dtype or ("fp32" if precision == "fp32" else precision)]


def clip_size(cfg: DictConfig, preset: ModelPreset) -> tuple[int, int]:
    return cfg.data.height or preset.height, cfg.data.width or preset.width


# The configuration keys the memory of a step depends on (the rest: paths, schedules, seeds do not).
MEMORY_KEYS = ("model.dtype", "model.fps", "data.frames", "data.height", "data.width", "echoreel.prism",
               "echoreel.query_positions", "optim.offload", "optim.grad_clip", "train.batch_size",
               "train.grad_accumulation", "train.precision", "train.gradient_checkpointing", "validation.every")
_estimates: dict[tuple, "TrainMemoryEstimate"] = {}


def estimate_training_memory(cfg: DictConfig, preset: ModelPreset, world_size: int = 1,
                             device_type: str = "cuda") -> TrainMemoryEstimate:
    """Per-GPU memory of training `cfg` on `preset` with `world_size` DDP processes (see the module
    docstring). device_type "cuda" models a GPU (its autocast and AdamW); "cpu" what a CPU run does.
    Takes about as long as a few seconds of real training at the size (tens of seconds at full size);
    remembered per process for the same memory-relevant settings."""
    values = tuple(str(OmegaConf.select(cfg, key)) for key in MEMORY_KEYS)
    key = (values, preset.to_json(), world_size, device_type)
    if key not in _estimates:
        if len(_estimates) > 64:
            _estimates.clear()
        try:
            _estimates[key] = _count_training_step(cfg, preset, world_size, device_type)
        finally:
            # the position code is cached per grid: a code made from fake tensors must not outlive the
            # count (the real run that follows would get it: query_positions, the toy's config)
            position_code.cache_clear()
    return _estimates[key]


def _count_training_step(cfg: DictConfig, preset: ModelPreset, world_size: int, device_type: str) -> TrainMemoryEstimate:
    height, width = clip_size(cfg, preset)
    f = 2 ** (len(preset.vae.ch_mult) - 1)
    estimate_cfg = copy.deepcopy(cfg)
    estimate_cfg.echoreel.init = None  # sized from the config: init weights must have that size anyway
    with torch.device("meta"):
        model = VideoModel(preset, dtype=base_dtype(cfg))
        echoreel = build_echoreel(estimate_cfg, model, (height // f, width // f))
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake = FakeTensorMode(allow_non_fake_inputs=True)  # the schedule's (real) tables meet fake latents
    with fake:
        model = model.to_empty(device="cpu")
        echoreel = echoreel.to_empty(device="cpu")
    model.requires_grad_(False).eval()
    offload = bool(cfg.optim.offload)
    cpu = torch.device("cpu")
    shell = Learner(cfg, model, echoreel, Batches(cfg, model, cpu), cpu, foreach=device_type == "cuda")
    # no GradScaler: a real one reads a value back, which fake tensors have not (unscaling works in
    # place and costs no memory)
    shell.scaler = torch.amp.GradScaler(cpu.type, enabled=False)
    if offload:  # the update happens in host memory: nothing of it is on the GPU
        shell.optimizer = _HostSideUpdate(shell.params)
        shell.scheduler = torch.optim.lr_scheduler.LambdaLR(shell.optimizer, lambda step: 1.0)
    gpu_autocast = device_type == "cuda" and cfg.train.precision != "fp32"
    frozen = _bytes(list(model.parameters()) + list(model.buffers()))
    trainable = _bytes(list(echoreel.parameters()) + list(echoreel.buffers()))
    gradients = sum(p.numel() * 4 for p in shell.params)
    with fake, (cuda_autocast_policy() if gpu_autocast else contextlib.nullcontext()), StorageCounter() as counter:
        counter.hold(list(model.parameters()) + list(model.buffers()) + list(echoreel.parameters()))
        _prime_optimizer(shell)
        optimizer = counter.live - frozen - trainable
        buckets = _ddp_buckets(shell) if world_size > 1 else None
        counter.peak = counter.live
        samples = _fake_samples(cfg, preset, height, width)
        shell.update([samples] * min(cfg.train.grad_accumulation, 2))  # the second micro-batch meets the gradients
        shell.module.detach()
        del buckets
    validation = 0
    if cfg.validation.every:
        sampling = estimate_sampling_memory(preset, 1, cfg.data.frames, height, width, base_dtype(cfg))
        held = frozen + trainable + optimizer + (gradients if world_size > 1 else 0)  # gradients freed, not buckets
        validation = held + sampling.total
    return TrainMemoryEstimate(
        preset.name, cfg.train.batch_size, bool(cfg.train.gradient_checkpointing), cfg.train.precision, world_size,
        offload, frozen, trainable, optimizer, gradients, gradients if world_size > 1 else 0, counter.peak, validation,
        host_optimizer=4 * gradients if offload else 0,
    )


class _HostSideUpdate(torch.optim.Optimizer):
    """What optim.offload's step leaves on the GPU: reads of the gradients, in-place weight copies."""

    def __init__(self, params):
        super().__init__(params, {"lr": 0.0})

    def step(self, closure=None):
        return None


def _bytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


def _prime_optimizer(shell) -> None:
    """A first AdamW step on zero gradients creates the states, as a run's first step does."""
    for p in shell.params:
        p.grad = torch.zeros_like(p)
    shell.optimizer.step()
    shell.optimizer.zero_grad(set_to_none=True)


def _ddp_buckets(shell) -> torch.Tensor:
    """DDP's gradient buckets (one tensor stands for all of them), and what its reducer does with
    gradient_as_bucket_view=True: in the micro-batch that synchronises (the last one; the others
    run under no_sync and accumulate plain gradients), each gradient is copied into its bucket as
    soon as it is accumulated and replaced by a view of it."""
    bucket = torch.zeros(sum(p.numel() for p in shell.params), dtype=torch.float32)
    syncing = [False]
    offset = 0
    for p in shell.params:
        view = bucket[offset: offset + p.numel()].view_as(p)
        offset += p.numel()

        def into_bucket(param, view=view):
            if syncing[0] and param.grad is not view:
                view.copy_(param.grad)
                param.grad = view

        p.register_post_accumulate_grad_hook(into_bucket)

    @contextlib.contextmanager
    def sync_context(last: bool):
        syncing[0] = last
        yield

    shell.sync_context = sync_context
    return bucket


def _fake_samples(cfg: DictConfig, preset: ModelPreset, height: int, width: int) -> list[Sample]:
    """One micro-batch of decoded clips (the data loader's output), with fresh texts to encode."""
    frames = cfg.data.frames
    samples = []
    for i in range(cfg.train.batch_size):
        target = Clip(None, torch.empty(3, frames, height, width))
        reference = Clip(None, torch.empty(3, frames, height, width))
        samples.append(Sample(i, i, f"a prompt {i}", f"a caption {i}", target, reference))
    return samples


GPU_SIZES = (24, 80)  # GiB of the usual cards, for the report's "fits" line
HEADROOM = 1 * GiB  # the CUDA context and the caching allocator's slack, which the estimate leaves out


def memory_report(cfg: DictConfig, presets: list[ModelPreset], device_type: str = "cuda") -> str:
    """What --estimate-memory prints: for each preset, the parts of the peak with gradient
    checkpointing on and off, for one process and per GPU under DDP, and which cards it fits."""
    blocks = []
    for preset in presets:
        columns = {}
        for checkpointing in (True, False):
            variant = with_overrides(cfg, **{"train.gradient_checkpointing": checkpointing})
            columns[checkpointing] = (estimate_training_memory(variant, preset, 1, device_type),
                                      estimate_training_memory(variant, preset, 2, device_type))
        one, _ = columns[True]
        height, width = clip_size(cfg, preset)
        rows = [
            ("frozen base model", lambda s, d: s.frozen_base),
            ("EchoReel weights (fp32)", lambda s, d: s.trainable),
            ("gradients (fp32)", lambda s, d: s.gradients),
            ("AdamW states" + (" (on the host)" if one.offload else ""),
             lambda s, d: s.host_optimizer if s.offload else s.optimizer),
            ("activations and temporaries", lambda s, d: s.activations),
            ("peak, one GPU", lambda s, d: s.total),
            ("DDP gradient buckets", lambda s, d: d.ddp_buffers),
            ("peak per GPU, DDP", lambda s, d: d.total),
        ]
        lines = [f"{preset.name}: {cfg.data.frames} frames of {width}x{height}, batch {cfg.train.batch_size} per GPU, "
                 f"{cfg.train.precision}, base weights {str(base_dtype(cfg)).removeprefix('torch.')}"
                 f"{', AdamW states on the host (optim.offload)' if one.offload else ''}"
                 f"{'' if cfg.validation.every else ', no validation'}",
                 f"  {'GiB':34}{'checkpointing on':>18}{'checkpointing off':>19}"]
        for label, value in rows:
            cells = "".join(f"{value(*columns[c]) / GiB:>18.2f} " for c in (True, False))
            lines.append(f"  {label:34}{cells}")
        for c in (True, False):
            ddp = columns[c][1].total
            fits = [f"{size} GB {'yes' if ddp + HEADROOM <= size * GiB else 'no'}" for size in GPU_SIZES]
            lines.append(f"  checkpointing {'on ' if c else 'off'}: per-GPU DDP peak + 1 GiB of headroom fits "
                         + ", ".join(fits))
        if cfg.validation.every:
            lines.append("  (the peaks include rank 0's validation sampling when it is the larger; "
                         f"validation.every={cfg.validation.every})")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def checkpoint_preset(path: str | Path) -> ModelPreset:
    """A base model file's preset, read without loading its weights where the format allows it
    (our safetensors: the metadata; other safetensors: the shapes; .ckpt/.pt: memory-mapped)."""
    path = Path(path)
    try:
        if path.suffix in (".safetensors", ".sft"):
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                if metadata.get("format") == VIDEO_MODEL_FORMAT:
                    return ModelPreset.from_json(metadata["preset"])
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        else:
            state, _ = read_state_dict(path)
            shapes = {k: tuple(v.shape) for k, v in state.items()}
        return detect_preset(shapes)
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - unreadable bytes or an unknown layout: not a usable base model
        raise CheckpointError(f"{path}: cannot tell which model this is ({type(error).__name__}: {error})") from error


def presets_to_estimate(cfg: DictConfig) -> list[ModelPreset]:
    """The base model's preset (model.checkpoint), else every official one model.expect names."""
    if cfg.model.checkpoint:
        return [checkpoint_preset(cfg.model.checkpoint)]
    matching = [p for name, p in PRESETS.items() if cfg.model.expect and name.startswith(cfg.model.expect)]
    if not matching:
        raise ConfigError("--estimate-memory needs model.checkpoint=... or a preset config (model.expect names the "
                          f"model); official models: {', '.join(PRESETS)}")
    return matching


def with_overrides(cfg: DictConfig, **changes) -> DictConfig:
    """A copy of cfg with `section.key` changes (the settings a refusal suggests)."""
    out = copy.deepcopy(cfg)
    for key, value in changes.items():
        section, name = key.split(".")
        out[section][name] = value
    return out


def settings_that_fit(cfg: DictConfig, preset: ModelPreset, limit: int, world_size: int, device_type: str,
                      resident: int = 0) -> tuple[dict[str, object], TrainMemoryEstimate] | None:
    """The first of the usual savers, taken in turn, whose estimate fits `limit` (beyond `resident`
    bytes already allocated): checkpointing, then halving the batch (with more accumulation, so
    the global batch stays), then the host-memory optimizer. None when even all of them do not fit."""
    changes: dict[str, object] = {}
    candidates = []
    if not cfg.train.gradient_checkpointing:
        changes["train.gradient_checkpointing"] = True
        candidates.append(dict(changes))
    batch, accumulation = cfg.train.batch_size, cfg.train.grad_accumulation
    for smaller in (d for d in range(batch - 1, 0, -1) if batch % d == 0):  # the global batch stays
        changes.update({"train.batch_size": smaller, "train.grad_accumulation": accumulation * batch // smaller})
        candidates.append(dict(changes))
    if not cfg.optim.offload:
        changes["optim.offload"] = True
        candidates.append(dict(changes))
    for candidate in candidates:
        estimate = estimate_training_memory(with_overrides(cfg, **candidate), preset, world_size, device_type)
        if estimate.total - resident <= limit:
            return candidate, estimate
    return None


def check_memory(cfg: DictConfig, model: VideoModel, echoreel: EchoReel, info: DistInfo) -> None:
    """At start: refuse a run whose estimated per-GPU peak exceeds what the device has, before
    training allocates anything. An estimate that cannot run is logged and skipped, never a reason
    to refuse a run that may fit."""
    device = info.device
    limit = available_bytes(device) if cfg.train.check_memory else None
    if limit is None:
        return
    resident = sum(t.untyped_storage().nbytes() for module in (model, echoreel)
                   for t in [*module.parameters(), *module.buffers()])
    # CPU processes of one node share its memory (the GPU ones have a device each)
    share = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    try:
        estimate = check_training_fits(cfg, model.preset, info.world_size, device, limit // share, resident)
    except InsufficientMemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - an estimate that cannot run must not stop a run that may fit
        log.warning("the memory estimate failed (%s: %s); memory not checked", type(error).__name__, error)
        return
    if info.is_main:
        log.info("memory: about %.2f GiB per process at the peak (see --estimate-memory); %.1f GiB free",
                 estimate.total / GiB, limit / GiB)


def check_training_fits(cfg: DictConfig, preset: ModelPreset, world_size: int, device: torch.device, limit: int,
                        resident: int = 0) -> TrainMemoryEstimate:
    """The estimate, if it fits `limit` free bytes beyond the `resident` ones already allocated (the
    loaded weights); else InsufficientMemoryError naming the estimate, the limit and the first of
    the usual savers that would fit (each one estimated, not guessed)."""
    estimate = estimate_training_memory(cfg, preset, world_size, device.type)
    if estimate.total - resident <= limit:
        return estimate
    fit = settings_that_fit(cfg, preset, limit, world_size, device.type, resident)
    advice = (f"these settings would fit: {field_text(fit[0])} (about {fit[1].total / GiB:.1f} GiB)" if fit else
              "neither gradient checkpointing, nor a smaller batch, nor optim.offload=true makes it fit")
    e = estimate
    raise InsufficientMemoryError(
        f"training needs about {e.total / GiB:.1f} GiB at its peak on {device} (frozen base {e.frozen_base / GiB:.1f}, "
        f"EchoReel weights {e.trainable / GiB:.1f}, gradients {e.gradients / GiB:.1f}, AdamW states "
        f"{e.optimizer / GiB:.1f}, activations and temporaries {e.activations / GiB:.1f}), but it can have "
        f"{(limit + resident) / GiB:.1f} GiB ({limit / GiB:.1f} GiB free besides the {resident / GiB:.1f} GiB of "
        f"weights already loaded); {advice}. train.check_memory=false skips this check"
    )


def field_text(changes: dict[str, object]) -> str:
    return " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in changes.items())

