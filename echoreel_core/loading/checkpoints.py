"""Reading official checkpoints safely and loading them strictly; our safetensors format.

Official VideoCrafter/LVDM files are Lightning (`state_dict`) or DeepSpeed (`module`, keys
prefixed `_forward_module.`) pickles. They are read with `torch.load(weights_only=True)` only:
a pickle that references anything beyond plain containers and tensors is refused, never run.
Files are memory-mapped and the model is built on the meta device and then takes the loaded
tensors as its parameters, so a checkpoint is never held in memory twice.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .detect import UnknownModelError, detect_family, detect_preset
from ..common.files import atomic_write
from ..models.video_model import VideoModel, component_prefixes
from ..models.presets import ModelPreset

log = logging.getLogger(__name__)

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
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file (expected a .ckpt, .pt or .safetensors checkpoint)")
    if path.suffix in (".safetensors", ".sft"):
        return _read_safetensors(path)
    return _unwrap(_read_pickle(path), path), {}


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except Exception as error:  # noqa: BLE001 - the parser raises several types on bad bytes; all mean "unreadable"
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({_first_line(error)}); expected a complete .safetensors "
            "file: it may be truncated or corrupt, download or convert it again"
        ) from error


# How torch's weights-only unpickler words a refusal to import or call something (torch 2.4 to 2.13):
# what a pickle asks to run, by name. Any of them means the file is not plain tensors and containers.
_CODE_REQUESTS = (
    re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global"),
    re.compile(r"Trying to load unsupported GLOBAL (\S+) whose module \S+ is blocked"),
    re.compile(r"Trying to call reduce for unrecognized function (.+?)(?: which belongs to|$)", re.M),
    re.compile(r"Can only create new object for nn\.Parameter or classes allowlisted via `add_safe_globals` but got (.+)"),
)


def code_request(message: str) -> str | None:
    """What a weights-only load refused to import or call, from the unpickler's message; None
    when the message is about anything else (bad bytes)."""
    for pattern in _CODE_REQUESTS:
        request = pattern.search(message)
        if request:
            return request.group(1).strip("`<>")
    return None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"[:300]


def _read_pickle(path: Path) -> dict:
    """torch.load(weights_only=True); every failure becomes a CheckpointError naming the file.

    The weights-only unpickler raises whatever the bytes provoke (UnpicklingError, EOFError,
    IndexError, KeyError, RuntimeError, ...), so everything but an interrupt is caught here;
    a file that asks to import or call code is told apart and refused as such.
    """
    try:
        with warnings.catch_warnings():  # bad bytes also make the unpickler warn about "protocol 42"
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:  # legacy (pre-zip) pickles cannot be memory-mapped
                if "mmap" not in str(error):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - see the docstring
        request = code_request(str(error))
        if request:
            raise CheckpointError(
                f"{path}: refused: the file asks to run code ({request}), so it was not loaded. Expected a "
                "checkpoint of plain tensors and containers: use the official file or a .safetensors copy"
            ) from error
        reason = re.search(r"WeightsUnpickler error: ([^\n]+)", str(error))
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({reason.group(1) if reason else _first_line(error)}); "
            "expected a .ckpt/.pt written by torch.save: it may be truncated or corrupt, download it again"
        ) from error


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
    operations=None,
    attention=None,
) -> VideoModel:
    """Load an official checkpoint or one of our safetensors files into a VideoModel, strictly.

    preset: None detects it from the metadata (our files) or from keys and shapes (official ones).
    dtype: the weights' dtype (float32 as official; None keeps what the file stores).
    operations, attention: the layer namespace and attention callable every part is built with
    (models/ops.py; default torch.nn and SDPA), e.g. ComfyUI's comfy.ops and optimized_attention.
    The model comes back in eval mode: VideoCrafter2's temporal convolutions hold dropout, which
    would make every sampling run differ (training calls .train() on what it trains).
    """
    path = Path(path)
    state, metadata = read_state_dict(path)
    if preset is None:
        if metadata.get("format") == FORMAT:
            preset = _metadata_preset(path, metadata)
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
        model = VideoModel(preset)  # the official keys and shapes
    expected = {
        prefix + k: v for attribute, prefix in component_prefixes(preset).items()
        for k, v in getattr(model, attribute).state_dict().items()
    }
    if operations is not None or attention is not None:  # its layers may hold no weight before loading
        with torch.device("meta"):
            model = VideoModel(preset, operations=operations, attention=attention)
    weights = {k: v for k, v in state.items() if not (IGNORED_KEYS.match(k) or ECHOREEL_KEYS.match(k) or k in SCHEDULE_KEYS)}
    _strict_check(path, expected, weights, f"the {preset.name} model")
    for attribute, prefix in component_prefixes(preset).items():
        part = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        getattr(model, attribute).load_state_dict(part, strict=True, assign=True)
    _load_schedule(model, state, path)
    check_finite(path, weights)
    model.eval()
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


def _metadata_preset(path: Path, metadata: dict[str, str]) -> ModelPreset:
    try:
        return ModelPreset.from_json(metadata["preset"])
    except Exception as error:  # noqa: BLE001 - a damaged JSON or a field of another version
        raise CheckpointError(
            f"{path}: its `preset` metadata cannot be read ({_first_line(error)}); expected the JSON that "
            "save_video_model writes: convert the original checkpoint again"
        ) from error


def _load_schedule(model: VideoModel, state: dict[str, torch.Tensor], path: Path) -> None:
    """Keep the stored abar and s_t exactly (the fp16 I2V file's rounding is part of it). A file
    without them (a hand-pruned or third-party conversion) keeps the preset's official arrays
    that VideoModel built, said once in the log."""
    for key in SCHEDULE_KEYS:
        if key in state:
            setattr(model.schedule, key, state[key].float().clone())
        elif getattr(model.schedule, key) is not None:
            log.warning("%s: no stored `%s`; using the official %s schedule", path, key, model.preset.name)


def check_finite(source: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse weights holding NaN or Inf, naming the first few tensors: they would sample black
    videos with no error. One pass over the weights, at load time only."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{source}: {len(bad)} weight {'tensors hold' if len(bad) > 1 else 'tensor holds'} NaN or Inf: "
            f"{', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}; the file is damaged (or was saved from a "
            "diverged training run): use another copy"
        )


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

