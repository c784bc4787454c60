"""How much memory a sampling run will need, known before it starts, and whether the machine has it.

A request such as 256 frames at 4096x4096 would otherwise start, run for minutes and then be
killed by the OS (or raise CUDA out-of-memory halfway through). The estimate is not a formula: the
model's own UNet and VAE decoder run once on the meta device (no data, no compute) at the requested
shape, and every tensor they create is counted while it is alive, so the figure follows the code.
Fused attention (SDPA's flash/memory-efficient kernels, what runs on CPU and CUDA) is counted as
its output only; on the meta device PyTorch would otherwise count the math path's full n x n
weights.
"""

from __future__ import annotations

import functools
import os
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..models.autoencoder import AutoencoderKL
from ..models.unet_lvdm import LVDMUNet
from ..models.unet_videocrafter import VideoCrafterUNet
from ..models.presets import ModelPreset

GiB = 2**30


class InsufficientMemoryError(MemoryError):
    """A request that would not fit; the message gives the estimate and the limit."""


class _FusedAttention(TorchFunctionMode):
    """SDPA as the fused kernels run it: only the output is allocated."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            q, v = args[0], args[2]
            return q.new_empty(*q.shape[:-1], v.shape[-1])
        return func(*args, **(kwargs or {}))


class _LiveBytes(TorchDispatchMode):
    """The peak of the bytes held by tensors created inside the block (freed ones subtracted)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor._base is None:  # views hold no storage of their own
                size = tensor.untyped_storage().nbytes()
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._free, size)
        return out

    def _free(self, size: int) -> None:
        self.live -= size


class StorageCounter(TorchDispatchMode):
    """The live and peak bytes of every tensor storage that ops create inside the block, plus the
    tensors `hold()` registers (weights made before it).

    Unlike _LiveBytes it counts storages, not tensors: an in-place op (which returns its input),
    a view, or a second tensor on the same storage adds nothing, and a storage is freed when the
    last tensor on it dies. Training needs this: AdamW updates its states in place, autograd keeps
    views of saved tensors, and a weight registered as held must never be counted twice. Works on
    real, meta and fake tensors alike (on fake ones `nbytes()` is what the real storage would be).
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # storage id -> [bytes, tensors on it that we track]
        self._tensors: set[int] = set()  # id() of the tracked tensors

    def hold(self, tensors) -> None:
        """Count tensors that already exist (weights, optimizer states) as live from now on."""
        for tensor in tensors:
            self._track(tensor)

    def _track(self, tensor: torch.Tensor) -> None:
        if id(tensor) in self._tensors:
            return
        storage = tensor.untyped_storage()
        key = storage._cdata
        entry = self._storages.get(key)
        if entry is None:
            entry = self._storages[key] = [storage.nbytes(), 0]
            self.live += entry[0]
            self.peak = max(self.peak, self.live)
        entry[1] += 1
        self._tensors.add(id(tensor))
        weakref.finalize(tensor, self._release, key, id(tensor))

    def _release(self, key: int, tensor_id: int) -> None:
        self._tensors.discard(tensor_id)
        entry = self._storages[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._storages[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return out


def _peak_bytes(module: torch.nn.Module, *inputs: torch.Tensor, **kwargs) -> int:
    with torch.no_grad(), _FusedAttention(), _LiveBytes() as counter:
        module(*inputs, **kwargs)
    return counter.peak


@dataclass(frozen=True)
class MemoryEstimate:
    unet_bytes: int  # peak activations of one (CFG-batched) UNet call
    decode_bytes: int  # peak activations of decoding one chunk of frames
    output_bytes: int  # the latents and the decoded float frames that stay alive

    @property
    def total(self) -> int:
        return max(self.unet_bytes, self.decode_bytes) + self.output_bytes


@functools.lru_cache(maxsize=32)
def estimate_sampling_memory(preset: ModelPreset, batch: int, frames: int, height: int, width: int,
                             dtype: torch.dtype = torch.float32, decode_chunk: int = 16) -> MemoryEstimate:
    """Activation memory of sampling `batch` videos (CFG doubles the UNet batch) at this size, weights
    excluded (they are already loaded). Runs the preset's modules on the meta device (about a second
    at full size), once per preset, shape and dtype."""
    f = 2 ** (len(preset.vae.ch_mult) - 1)
    shape = (batch, preset.vae.embed_dim, frames, height // f, width // f)
    with torch.device("meta"):
        unet = (LVDMUNet(preset.unet) if preset.family == "lvdm" else VideoCrafterUNet(preset.unet)).to(dtype)
        vae = AutoencoderKL(preset.vae).to(dtype)
        x = torch.empty(2 * batch, *shape[1:], dtype=dtype)
        context = torch.empty(2 * batch, 77 + (16 if preset.is_i2v else 0), preset.unet.context_dim, dtype=dtype)
        extra = {"fps": torch.empty(2 * batch, dtype=torch.long)} if preset.family != "lvdm" else {}
        unet_bytes = _peak_bytes(unet, x, torch.empty(2 * batch, dtype=torch.long), context, **extra)
        chunk = torch.empty(min(decode_chunk, batch * frames), shape[1], shape[3], shape[4], dtype=dtype)
        decode_bytes = _peak_bytes(vae.decode_frames, chunk)
    latent_bytes = 4 * batch * shape[1] * frames * shape[3] * shape[4] * torch.finfo(dtype).bits // 8
    frame_bytes = batch * frames * height * width * 3 * 4 * 2  # decoded (3, t, H, W) and the (t, H, W, 3) copy
    return MemoryEstimate(unet_bytes, decode_bytes, latent_bytes + frame_bytes)


def available_bytes(device: torch.device) -> int | None:
    """Free memory where the run will allocate: the CUDA device's free memory, else the RAM the OS
    can still give (MemAvailable), falling back to physical memory where /proc is absent; None
    where neither can be read (Windows CPU, other accelerators): then nothing is refused."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return None


def check_fits(estimate: MemoryEstimate, device: torch.device, what: str) -> None:
    """Refuse a run whose estimate exceeds the free memory of `device`, before any work."""
    limit = available_bytes(device)
    if limit is not None and estimate.total > limit:
        raise InsufficientMemoryError(
            f"{what} needs about {estimate.total / GiB:.1f} GiB ({estimate.unet_bytes / GiB:.1f} GiB for a UNet call, "
            f"{estimate.decode_bytes / GiB:.1f} GiB to decode, {estimate.output_bytes / GiB:.1f} GiB of outputs) beyond "
            f"the loaded weights, but {device.type} has {limit / GiB:.1f} GiB free: use fewer frames or a smaller size"
        )
