"""Reading official checkpoints safely and loading them strictly; our safetensors format.

Official VideoCrafter/LVDM files are Lightning (`state_dict`) or DeepSpeed (`module`, keys
prefixed `_forward_module.`) pickles. They are read with `torch.load(weights_only=True)` only:
a pickle that references anything beyond plain containers and tensors is refused, never run.
Files are memory-mapped and the model is built on the meta device and then takes the loaded
tensors as its parameters, so a checkpoint is never held in memory twice.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .detect import UnknownModelError, detect_family, detect_preset
from .files import atomic_write
from .models.video_model import VideoModel, component_prefixes
from .presets import ModelPreset

FORMAT = "echoreel.video_model"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SCHEDULE_KEYS = ("alphas_cumprod", "scale_arr")
# Stored by the official code but recomputable or unused; dropped by name, never by a blanket
# non-strict load: the other schedule buffers, the int `position_ids` of HF CLIP, and the text
# tower that OpenCLIP's image embedder keeps after `del model.transformer`.
IGNORED_KEYS = re.compile(
    r"^(betas|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod|"
    r"log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod|"
    r"posterior_variance|posterior_log_variance_clipped|posterior_mean_coef[12]|"
    r"cond_stage_model\.transformer\.text_model\.embeddings\.position_ids|"
    r"embedder\.model\.(token_embedding\.weight|positional_embedding|ln_final\.(weight|bias)|"
    r"text_projection|logit_scale))$"
)
# EchoReel's own layers live inside the official UNet keys; they are loaded by the EchoReel code.
ECHOREEL_KEYS = re.compile(r"^model\.diffusion_model\.(video_inject_process\.|.*\.video_inject_)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a checkpoint file (memory-mapped where possible) and its metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix in (".safetensors", ".sft"):
        return _read_safetensors(path)
    return _unwrap(_read_pickle(path), path), {}


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({error}); it may be truncated or corrupt: download it again"
        ) from error


def _read_pickle(path: Path) -> dict:
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:  # legacy (pre-zip) pickles cannot be memory-mapped
            if "mmap" not in str(error):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if unsafe:
            raise CheckpointError(
                f"{path}: refused: the pickle references `{unsafe.group(1)}`, which is not a plain tensor "
                "container. Loading it could run code, so it was not loaded. Use the official file or a "
                ".safetensors copy."
            ) from error
        reason = re.search(r"WeightsUnpickler error: ([^\n]+)", str(error))
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({reason.group(1) if reason else 'unpickling failed'}); "
            "it may be truncated or corrupt"
        ) from error
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({error}); it may be truncated or corrupt") from error


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    """Take `module` (DeepSpeed) or `state_dict` (Lightning), strip `_forward_module.`/`module.`."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    for wrapper in ("module", "state_dict"):
        if isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in ("_forward_module.", "module."):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        state[key] = value
    if not state:
        raise CheckpointError(f"{path}: holds no tensors")
    return state


def _strict_check(path: Path, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], what: str) -> None:
    """Raise one error listing missing keys, unexpected keys and shape mismatches (first few, counts)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [
        f"{k} (expected {tuple(expected[k].shape)}, found {tuple(found[k].shape)})"
        for k in expected
        if k in found and expected[k].shape != found[k].shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if items:
            problems.append(f"{len(items)} {label}: {', '.join(items[:5])}{', ...' if len(items) > 5 else ''}")
    if problems:
        raise CheckpointError(f"{path}: does not fit {what}: " + "; ".join(problems))


def load_video_model(
    path: str | Path,
    preset: ModelPreset | None = None,
    dtype: torch.dtype | None = torch.float32,
    device: torch.device | str = "cpu",
) -> VideoModel:
    """Load an official checkpoint or one of our safetensors files into a VideoModel, strictly.

    preset: None detects it from the metadata (our files) or from keys and shapes (official ones).
    dtype: the weights' dtype (float32 as official; None keeps what the file stores).
    The model comes back in eval mode: VideoCrafter2's temporal convolutions hold dropout, which
    would make every sampling run differ (training calls .train() on what it trains).
    """
    path = Path(path)
    state, metadata = read_state_dict(path)
    if preset is None:
        if metadata.get("format") == FORMAT:
            preset = ModelPreset.from_json(metadata["preset"])
        else:
            shapes = {k: tuple(v.shape) for k, v in state.items()}
            try:
                preset = detect_preset(shapes)
            except UnknownModelError as error:
                raise CheckpointError(f"{path}: not a supported video model: {error}") from error
            except KeyError as error:
                raise CheckpointError(
                    f"{path}: looks like {detect_family(shapes)} but lacks {error}, which every such "
                    "checkpoint has: the file is incomplete"
                ) from error
    with torch.device("meta"):
        model = VideoModel(preset)
    expected = {
        prefix + k: v for attribute, prefix in component_prefixes(preset).items()
        for k, v in getattr(model, attribute).state_dict().items()
    }
    weights = {k: v for k, v in state.items() if not (IGNORED_KEYS.match(k) or ECHOREEL_KEYS.match(k) or k in SCHEDULE_KEYS)}
    _strict_check(path, expected, weights, f"the {preset.name} model")
    for attribute, prefix in component_prefixes(preset).items():
        part = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        getattr(model, attribute).load_state_dict(part, strict=True, assign=True)
    for key in SCHEDULE_KEYS:  # keep the stored arrays: the fp16 I2V file's rounding is part of it
        if key in state:
            setattr(model.schedule, key, state[key].float().clone())
    model.eval()
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


def save_video_model(model: VideoModel, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write a VideoModel as safetensors in the official key names, with its preset as metadata, atomically."""
    path = Path(path)
    tensors = {}
    for attribute, prefix in component_prefixes(model.preset).items():
        for key, value in getattr(model, attribute).state_dict().items():
            value = value.to(dtype) if dtype is not None and value.is_floating_point() else value
            tensors[prefix + key] = value.contiguous()
    tensors["alphas_cumprod"] = model.schedule.alphas_cumprod.contiguous()
    if model.schedule.scale_arr is not None:
        tensors["scale_arr"] = model.schedule.scale_arr.contiguous()
    stored = dtype or model.dtype
    metadata = {
        "format": FORMAT,
        "family": model.preset.family,
        "preset_name": model.preset.name,
        "dtype": next(name for name, d in DTYPES.items() if d == stored),
        "preset": model.preset.to_json(),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

