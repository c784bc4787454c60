"""The training configuration: its schema, presets, loading, validation and --help text.

A configuration is the schema's defaults (the dataclasses below, one per section, each field
with its --help line), then a preset (`configs/train_<name>.yaml`) or a YAML file, then
`key=value` overrides from the command line, merged by OmegaConf and checked against the schema
(unknown keys and wrong types are refused) and by `validate_config` (values that cannot work
together). Every failure is a `ConfigError` that names the key. Paths are then made absolute
against the working directory, so a run's saved config.yaml works from any other.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..loading.checkpoints import DTYPES
from .state import RESUME_WORDS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
PRECISIONS = ("fp32", "bf16", "fp16")
# the keys that name files or folders (train.resume too, unless it is `latest` or `auto`)
PATH_KEYS = ("model.checkpoint", "data.json", "data.cache_dir", "echoreel.init", "train.output_dir", "validation.json")


def _opt(default: Any, help: str, factory=None):
    """A config field with its --help line."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelSection:
    checkpoint: Optional[str] = _opt(None, "base model file (.ckpt/.pt/.safetensors), loaded strictly, frozen")
    expect: Optional[str] = _opt(None, "refuse a base model whose preset name does not start with this")
    dtype: Optional[str] = _opt(None, "frozen base weights: fp32|bf16|fp16 (null: fp32, or the precision's dtype)")
    fps: Optional[int] = _opt(None, "fps condition of fps-conditioned models (null: the model's sampling default)")


@dataclass
class DataSection:
    json: Optional[str] = _opt(None, "dataset JSON: [{input_text, gt_video_path, inject_text, inject_video_path}]")
    frames: int = _opt(16, "frames per clip (official 16)")
    stride: int = _opt(4, "frame stride (official 4)")
    start: int = _opt(0, "first frame (official 0)")
    height: Optional[int] = _opt(None, "clip height in pixels (null: the model's)")
    width: Optional[int] = _opt(None, "clip width in pixels (null: the model's)")
    resize_mode: str = _opt("squash", "squash (official: aspect ratio not kept) | crop")
    short_videos: str = _opt("official", "official (skip targets < frames, else repeat last frame) | repeat | skip")
    num_workers: int = _opt(2, "DataLoader worker processes per rank (0: load in the main process)")
    cache: bool = _opt(False, "cache VAE posteriors, text contexts (and I2V image tokens) on disk")
    cache_dir: Optional[str] = _opt(None, "cache folder (null: <output_dir>/cache)")
    cache_dtype: str = _opt("fp32", "dtype of cached tensors: fp32 (exact) | fp16 | bf16 (half the disk)")


@dataclass
class EchoReelSection:
    init: Optional[str] = _opt(None, "start from these EchoReel weights (ours or the official checkpoint.pt)")
    prism: Dict[str, Any] = _opt(None, "Prism overrides, e.g. echoreel.prism.layers=8 (ActionPrismConfig fields)", dict)
    export_dtype: str = _opt("fp32", "dtype of the exported echoreel.safetensors: fp32|fp16|bf16")
    query_positions: bool = _opt(False, "add a fixed 2D position code to the integration queries (not official; "
                                        "for bases whose features do not know positions, as the toy model's)")


@dataclass
class OptimSection:
    lr: float = _opt(1e-4, "AdamW learning rate (official 1e-4)")
    betas: List[float] = _opt(None, "AdamW betas (official [0.9, 0.9])", lambda: [0.9, 0.9])
    weight_decay: float = _opt(0.03, "decoupled weight decay (official 0.03)")
    eps: float = _opt(1e-8, "AdamW eps")
    warmup_steps: int = _opt(0, "linear learning-rate warmup steps (official 0)")
    grad_clip: Optional[float] = _opt(None, "clip the gradient norm to this (null: off, as official)")
    offload: bool = _opt(False, "keep AdamW's fp32 states (and a master copy of the weights) in host RAM, not on "
                                "the GPU: 2x the trained weights' bytes less GPU memory, 4x more RAM per process")


@dataclass
class TrainSection:
    output_dir: Optional[str] = _opt(None, "where checkpoints, logs, exports and validation videos go")
    batch_size: int = _opt(4, "samples per micro-batch per process")
    grad_accumulation: int = _opt(1, "micro-batches per optimizer step")
    max_steps: int = _opt(20000, "optimizer steps to train for (in total, across resumes)")
    precision: str = _opt("fp32", "fp32 | bf16 | fp16 (autocast; fp16 adds a GradScaler)")
    gradient_checkpointing: bool = _opt(False, "recompute UNet blocks and Prism layers in backward (less memory)")
    seed: int = _opt(42, "seed: data order, noise, initialisation (official 42)")
    timesteps: List[int] = _opt(None, "[first, last) training timesteps, drawn uniformly (official [0, 1000], all of them)",
                                lambda: [0, 1000])
    save_every: int = _opt(1500, "save a checkpoint every N steps (official 1500; also at the end)")
    keep_checkpoints: int = _opt(2, "training checkpoints kept (0: all)")
    log_every: int = _opt(1, "write a CSV/TensorBoard row every N steps")
    device: str = _opt("auto", "auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)")
    resume: Optional[str] = _opt(None, "latest | auto (latest if any) | a checkpoint path (also --resume)")
    timeout_s: int = _opt(300, "seconds a process waits for the others (a collective, rank 0's saves) before the "
                               "run ends with an error naming the lost peer; the checkpoint on disk stays the last good one")
    check_memory: bool = _opt(True, "estimate the per-GPU memory at start and refuse a run that does not fit "
                                    "(see --estimate-memory)")


@dataclass
class ValidationSection:
    every: int = _opt(200, "sample validation videos every N steps (official 200; 0: never)")
    json: Optional[str] = _opt(None, "validation JSON (null: every (n/20)-th training entry, as official)")
    num_samples: int = _opt(2, "validation entries per round")
    steps: int = _opt(25, "DDIM steps of validation sampling")
    cfg: Optional[float] = _opt(None, "guidance scale (null: the model's default)")
    eta: float = _opt(1.0, "DDIM eta (official 1.0)")
    seed: int = _opt(123, "sampling seed")
    strength: float = _opt(1.0, "EchoReel strength")
    negative_prompt: str = _opt("", "negative prompt")
    format: str = _opt("mp4", "mp4 | gif")
    video_fps: int = _opt(8, "fps of the written validation videos")


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    echoreel: EchoReelSection = field(default_factory=EchoReelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    validation: ValidationSection = field(default_factory=ValidationSection)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


def preset_configs() -> dict[str, Path]:
    """Shipped presets by short name: lvdm, videocrafter2, videocrafter1_t2v, videocrafter1_i2v, toy, toy_i2v."""
    return {p.stem.removeprefix("train_"): p for p in sorted(CONFIG_DIR.glob("train_*.yaml"))}


def load_config(config: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Defaults <- the preset or YAML file <- key=value overrides, checked against the schema."""
    layers = [OmegaConf.structured(TrainConfig)]
    if config is not None:
        path = preset_configs().get(str(config).removeprefix("train_").replace("-", "_"), Path(config))
        if not path.is_file():
            raise ConfigError(f"--config {config}: neither a preset ({', '.join(preset_configs())}) nor a YAML file")
        layers.append(OmegaConf.load(path))
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides or [])))
        cfg = OmegaConf.merge(*layers)
    except OmegaConfBaseException as error:
        raise ConfigError(f"bad configuration: {error}".splitlines()[0] + _hint(error)) from error
    validate_config(cfg)
    _absolute_paths(cfg)
    return cfg


def _absolute_paths(cfg: DictConfig) -> None:
    """Make every path in `cfg` absolute, against the working directory it was given in. The run
    then works with absolute paths, and the config.yaml it saves resumes from any directory
    (`--config runs/x/config.yaml --resume latest`), not only from the one it started in."""
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key)
        if value:
            OmegaConf.update(cfg, key, os.path.abspath(value))
    if cfg.train.resume and cfg.train.resume not in RESUME_WORDS:
        cfg.train.resume = os.path.abspath(cfg.train.resume)


def _hint(error: OmegaConfBaseException) -> str:
    key = getattr(error, "full_key", None)
    return f" (key {key}; see --help for the keys)" if key else " (see --help for the keys)"


def validate_config(cfg: DictConfig) -> None:
    checks = [
        (cfg.train.precision in PRECISIONS, f"train.precision must be one of {PRECISIONS}"),
        (cfg.model.dtype in (None, *DTYPES), f"model.dtype must be null or one of {tuple(DTYPES)}"),
        (cfg.echoreel.export_dtype in DTYPES, f"echoreel.export_dtype must be one of {tuple(DTYPES)}"),
        (cfg.data.cache_dtype in DTYPES, f"data.cache_dtype must be one of {tuple(DTYPES)}"),
        (len(cfg.optim.betas) == 2, "optim.betas must be two numbers"),
        (cfg.train.batch_size >= 1 and cfg.train.grad_accumulation >= 1 and cfg.train.max_steps >= 1,
         "train.batch_size, train.grad_accumulation and train.max_steps must be at least 1"),
        (cfg.train.save_every >= 1, "train.save_every must be at least 1"),
        (cfg.train.timeout_s >= 1, "train.timeout_s must be at least 1 second"),
        (len(cfg.train.timesteps) == 2 and 0 <= cfg.train.timesteps[0] < cfg.train.timesteps[1] <= 1000,
         "train.timesteps must be [first, last) with 0 <= first < last <= 1000"),
        (cfg.validation.format in ("mp4", "gif"), "validation.format must be mp4 or gif"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    base_dtype = cfg.model.dtype
    if base_dtype not in (None, "fp32") and base_dtype != cfg.train.precision:
        raise ConfigError(f"model.dtype={base_dtype} needs train.precision={base_dtype} (autocast in that dtype)")


def _shown(default) -> str:
    """A default as it is written on the command line: null, true/false, else the value. Tested with
    `is` and isinstance, never a dict lookup: 1 == True and 0 == False, so a lookup shows counts as
    booleans."""
    if default is None:
        return "null"
    if isinstance(default, bool):
        return str(default).lower()
    return str(default)


def key_help() -> str:
    """One line per config key, for --help."""
    lines = ["configuration keys (key=value on the command line; defaults before any preset):"]
    for section in dataclasses.fields(TrainConfig):
        for f in dataclasses.fields(section.default_factory):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {section.name}.{f.name} [{_shown(default)}]: {f.metadata['help']}")
    lines.append(f"presets for --config: {', '.join(preset_configs())}")
    return "\n".join(lines)
