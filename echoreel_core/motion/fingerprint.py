"""Fingerprints a motion file records: which Prism made it, and from which video and frames.

Action features are the Prism's output, so they fit only the Prism weights that made them: a
motion file stores the SHA-256 of those weights' values, and loading compares it with the weights
at hand. The hash covers every Prism tensor (its `Sout` head too) by name, shape and float32
values, in key order: the same weights give the same hash whatever dtype they were stored in
(fp16 values are exact in float32), on whatever device, loaded by the core or by ComfyUI's
layers. A full-size Prism holds 493 M values (2 GB in float32), 2.5 s of SHA-256 here, so the hash
is kept per module and recomputed only when a tensor was replaced or changed in place (its
storage pointer or torch's version counter differs), as training or a weight patch does.
"""

from __future__ import annotations

import hashlib
import weakref
from pathlib import Path

import torch
import torch.nn as nn

_CHUNK = 1 << 24  # values per hashed piece: 64 MB in float32, whatever the tensor's size
_prism_hashes: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def _state_key(state: dict[str, torch.Tensor]) -> tuple:
    """What changes when any tensor is replaced or written in place (not its values: cheap). Inference
    tensors (ComfyUI runs nodes under torch.inference_mode) keep no version counter: for them only
    a replacement is seen, which is how a host changes weights it loaded for inference."""
    return tuple((name, t.data_ptr(), None if t.is_inference() else t._version, t.dtype, t.device, tuple(t.shape))
                 for name, t in state.items())


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over (name, shape, float32 values) of every tensor, in sorted key order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        flat = tensor.reshape(-1)
        for begin in range(0, flat.numel(), _CHUNK):
            piece = flat[begin:begin + _CHUNK].to(device="cpu", dtype=torch.float32).contiguous()
            digest.update(piece.numpy())  # the buffer itself: no copy of a float32 CPU tensor
    return digest.hexdigest()


def prism_sha256(prism: nn.Module) -> str:
    """The hash of an Action Prism's weights (EchoReel.video_inject_process), cached per module."""
    state = prism.state_dict()
    key = _state_key(state)
    cached = _prism_hashes.get(prism)
    if cached is not None and cached[0] == key:
        return cached[1]
    value = tensors_sha256(state)
    _prism_hashes[prism] = (key, value)
    return value


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (the source video), read in 1 MB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def frames_sha256(frames: torch.Tensor) -> str:
    """SHA-256 of the frames the Prism saw, (t, h, w, 3) in [0, 1] as the reference loader gives
    them: the same selection of the same video gives the same hash in the CLI and in ComfyUI."""
    return tensors_sha256({"frames": frames})
