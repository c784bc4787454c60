"""Motion files: action features saved to be reused without the reference video.

A motion file is a safetensors file with two tensors, `cond` and `uncond` (the Prism's output for
the prompt and for the negative prompt, (b, n_refs * t, tout_dim), as ActionFeatures holds them,
in the dtype they were computed in, so a loaded motion samples bit for bit as the live one), and
string metadata:

    format "echoreel.motion", format_version      what this is, and which layout (VERSION)
    family, prism_sha256, echoreel_config         the EchoReel weights that made it: their base
                                                  family, the hash of their Prism's values
                                                  (fingerprint.py) and their config described
    echoreel_weights                              their file name, when known
    frames, references                            frames per reference clip, and how many clips
    source_video, source_sha256, frames_sha256,   provenance (PROVENANCE), each present only when
    start, stride, fps, size, resize, select,     known; loaded back into ActionFeatures.info
    seed, posterior, caption, prompt,
    negative_prompt

The features depend on the prompts as well as on the reference: the Prism reads the prompt with
the reference caption, so a motion file holds the motion as distilled for the prompts recorded in
it. Reading checks the format, version, tensors and shapes; loading for use also refuses weights
whose family or Prism hash differs from the file's, naming both. Files are written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..loading.checkpoints import CheckpointError, read_state_dict
from ..echoreel.features import ActionFeatures
from ..echoreel.weights import EchoReel
from ..common.files import atomic_write
from .fingerprint import prism_sha256

FORMAT = "echoreel.motion"
VERSION = 1
TENSORS = ("cond", "uncond")
# provenance keys, in the order `describe` prints them: what ActionFeatures.info may hold
PROVENANCE = {
    "source_video": "the reference video's file name",
    "source_sha256": "SHA-256 of the reference video file's bytes",
    "frames_sha256": "SHA-256 of the frames the Prism saw (float32, as the reference loader gives them)",
    "start": "the first frame read",
    "stride": "every stride-th frame was read",
    "fps": "the reference video's frame rate (the frames read are stride apart)",
    "size": "the frames' size, width x height",
    "resize": "how the frames were resized (squash or crop)",
    "select": "frames chosen by index or by time",
    "seed": "the seed of the reference latents' VAE posterior sample",
    "posterior": "sample or mean",
    "caption": "the reference caption",
    "prompt": "the prompt the features were encoded with",
    "negative_prompt": "the negative prompt of the unconditional branch",
}
_IDENTITY = ("format", "format_version", "family", "prism_sha256", "echoreel_config", "echoreel_weights",
             "frames", "references")


class MotionFileError(ValueError):
    """A motion file that cannot be read or used; the message names the file and what differs."""


@dataclass(frozen=True)
class Motion:
    """A motion file read back: its features (info holding the provenance) and all its metadata."""

    path: Path
    features: ActionFeatures
    metadata: dict[str, str]

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def weights_identity(echoreel: EchoReel) -> dict[str, str]:
    """What a motion file records of the EchoReel weights, and what loading compares."""
    return {"family": echoreel.config.base_family, "prism_sha256": prism_sha256(echoreel.video_inject_process),
            "echoreel_config": echoreel.config.describe()}


def save_motion(path: str | Path, features: ActionFeatures, echoreel: EchoReel, info: dict | None = None,
                weights_name: str = "") -> Path:
    """Write `features` made by `echoreel` to `path` atomically. info: provenance (PROVENANCE keys),
    None for unknown, over features.info; weights_name: the EchoReel file, when known."""
    path = Path(path)
    width = echoreel.config.prism.tout_dim
    for name, tensor in zip(TENSORS, (features.cond, features.uncond)):
        if tensor.ndim != 3 or tensor.shape[-1] != width:
            raise ValueError(f"{path}: the {name} features are {tuple(tensor.shape)}; these EchoReel weights "
                             f"({echoreel.config.describe()}) make (b, n_refs * t, {width})")
    if features.cond.shape != features.uncond.shape:
        raise ValueError(f"{path}: cond {tuple(features.cond.shape)} and uncond {tuple(features.uncond.shape)} differ")
    _check_frames(path, features.cond.shape, features.frames_per_reference)
    merged = {**features.info, **{k: v for k, v in (info or {}).items() if v is not None}}
    metadata = {k: str(v) for k, v in merged.items() if k not in _IDENTITY}
    metadata.update(weights_identity(echoreel))
    metadata.update({"format": FORMAT, "format_version": str(VERSION), "frames": str(features.frames_per_reference),
                     "references": str(features.cond.shape[1] // features.frames_per_reference)})
    if weights_name:
        metadata["echoreel_weights"] = weights_name
    tensors = {name: t.detach().cpu().contiguous() for name, t in zip(TENSORS, (features.cond, features.uncond))}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_motion(path: str | Path) -> Motion:
    """A motion file's features and metadata, checked for format, version and shapes (not for
    which weights it fits: `load_motion` does that)."""
    path = Path(path)
    try:
        state, metadata = read_state_dict(path)
    except CheckpointError as error:
        raise MotionFileError(str(error)) from None
    if metadata.get("format") != FORMAT:
        found = f"format {metadata['format']!r}" if "format" in metadata else "no `format` metadata"
        raise MotionFileError(f"{path}: not an EchoReel motion file ({found}, expected {FORMAT!r}): save one with "
                              "Save Motion or `python -m echoreel_core.motion encode`")
    version = metadata.get("format_version", "")
    if not version.isdigit() or int(version) > VERSION:
        raise MotionFileError(f"{path}: motion format version {version or 'missing'}; this EchoReel reads version "
                              f"{VERSION} and older: update the pack")
    missing = [name for name in TENSORS if name not in state]
    if missing or set(state) != set(TENSORS):
        raise MotionFileError(f"{path}: expected the tensors {', '.join(TENSORS)}, found {', '.join(sorted(state)) or 'none'}")
    cond, uncond = state["cond"], state["uncond"]
    if cond.ndim != 3 or cond.shape != uncond.shape:
        raise MotionFileError(f"{path}: cond {tuple(cond.shape)} and uncond {tuple(uncond.shape)}: expected two "
                              "equal (b, n_refs * t, tout_dim) tensors")
    frames = metadata.get("frames", "")
    if not frames.isdigit() or int(frames) < 1:
        raise MotionFileError(f"{path}: `frames` metadata is {frames!r}, expected a positive whole number")
    _check_frames(path, cond.shape, int(frames), MotionFileError)
    for name, tensor in state.items():
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise MotionFileError(f"{path}: the {name} features are {tensor.dtype} with NaN/Inf or not floats: "
                                  "the file is damaged, save the motion again")
    info = {k: v for k, v in metadata.items() if k not in _IDENTITY}
    return Motion(path, ActionFeatures(cond, uncond, int(frames), info), metadata)


def check_weights(motion: Motion, echoreel: EchoReel) -> None:
    """Refuse EchoReel weights other than those that made the motion, naming both."""
    saved = motion.metadata
    given = weights_identity(echoreel)
    made_by = (f"{saved.get('family', '?')} weights {saved.get('echoreel_config', '?')}, Prism sha256 "
               f"{saved.get('prism_sha256', '?')[:16]}" + (f" ({saved['echoreel_weights']})" if saved.get("echoreel_weights") else ""))
    used = f"{given['family']} weights {given['echoreel_config']}, Prism sha256 {given['prism_sha256'][:16]}"
    if saved.get("family") != given["family"]:
        raise MotionFileError(f"{motion.path}: this motion was made for another model family: by {made_by}; the "
                              f"EchoReel weights given are {used}. Encode the reference again with these weights")
    if saved.get("prism_sha256") != given["prism_sha256"]:
        raise MotionFileError(f"{motion.path}: this motion was made by other Action Prism weights: by {made_by}; the "
                              f"EchoReel weights given are {used}. Its features mean nothing to another Prism's "
                              "integration layers: encode the reference again with these weights")
    width = echoreel.config.prism.tout_dim
    if motion.features.cond.shape[-1] != width:
        raise MotionFileError(f"{motion.path}: features {motion.features.cond.shape[-1]} wide; these weights take {width}")


def load_motion(path: str | Path, echoreel: EchoReel) -> ActionFeatures:
    """The features of a motion file, for the EchoReel weights that made it (else MotionFileError)."""
    motion = read_motion(path)
    check_weights(motion, echoreel)
    return motion.features


def describe(motion: Motion) -> list[str]:
    """The metadata as lines a person reads (the CLI's `info`, the nodes' text)."""
    m, features = motion.metadata, motion.features
    lines = [
        f"{motion.path.name}: EchoReel motion, format version {m['format_version']}, {motion.size:,} bytes",
        f"  made by       EchoReel weights for {m.get('echoreel_config', '?')}"
        + (f", file {m['echoreel_weights']}" if m.get("echoreel_weights") else ""),
        f"  Prism sha256  {m.get('prism_sha256', '?')}",
        f"  features      cond and uncond {tuple(features.cond.shape)} {str(features.cond.dtype).removeprefix('torch.')}: "
        f"{m['references']} reference(s) of {m['frames']} frames",
    ]
    keys = [k for k in PROVENANCE if k in m] + sorted(k for k in m if k not in PROVENANCE and k not in _IDENTITY)
    lines += [f"  {key:<14}{m[key] if m[key] else '(empty)'}" for key in keys]
    return lines


def _check_frames(path: Path, shape: torch.Size, frames: int, error: type[Exception] = ValueError) -> None:
    if frames < 1 or shape[1] % frames:
        raise error(f"{path}: {shape[1]} feature frames do not split into references of {frames} frames")
