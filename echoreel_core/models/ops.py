"""Where the weights of the core's models come from: an `operations` namespace, as ComfyUI's own
model files take it, plus the rules that let a host store them in one dtype and compute in another.

A namespace is any object with the layer classes Linear, Conv1d, Conv2d, Conv3d, GroupNorm,
LayerNorm and Embedding, taking torch.nn's constructor arguments plus `dtype=` and `device=`.
The core's default, `torch_ops`, is torch.nn itself. Inside ComfyUI the node layer passes
`comfy.ops.disable_weight_init`, `manual_cast`, ...: their layers may store weights in fp8/fp16 and
cast them to the input at every call, or hold no weight at all until the state dict is loaded
(ComfyUI 0.33's DynamicVRAM). The models therefore follow four rules
(../shared/docs/comfyui-native.md §4.5):

1. Every weight sits in an operations layer, or in a leaf module of raw parameters (no children:
   `ParameterLeaf`, `RelativePosition`) that casts them to the activation's device and dtype where
   they are used. State-dict keys stay the official ones (`rename_state_keys`).
2. Constructors never touch a weight: they record, in construction order, how each weight is
   initialised (every layer's `reset_parameters`, and the model's own steps: zero-initialised
   output projections, relative-position tables, OpenCLIP's embeddings), and `initialize_weights()`
   runs that record. A model built without a namespace (`operations=None`, the core's own path:
   training from scratch, the toy, tests) runs it at the end of its constructor, from the random
   state it started with, so a seed gives exactly the weights that initialising in place gave. A
   model built with a namespace is left for its state dict (or call `initialize_weights()`).
3. The compute dtype is `compute_dtype(module, x)`: an explicit `module.compute_dtype`, else the
   stored dtype when torch computes in it (fp32/fp16/bf16/fp64), else the input's dtype (fp8 storage).
4. Float32 norms (VideoCrafter's GroupNorm32) cast weight and bias themselves.

Attention: every model takes `attention=`, the `(q, k, v, heads) -> out` callable of its softmax
attentions (default `sdpa_attention`), kept per layer; `set_attention()` replaces it after the fact.
The relative-position attention stays explicit (it needs the softmax weights).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import AttentionFn, sdpa_attention


class torch_ops:  # noqa: N801 - named like comfy.ops' namespaces
    """The core's default operations namespace: torch.nn's own layers."""

    Linear = nn.Linear
    Conv1d = nn.Conv1d
    Conv2d = nn.Conv2d
    Conv3d = nn.Conv3d
    GroupNorm = nn.GroupNorm
    LayerNorm = nn.LayerNorm
    Embedding = nn.Embedding


COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ---- float32 GroupNorm over any namespace ----------------------------------------------------------


class Float32GroupNorm:
    """GroupNorm computed in float32 and cast back, as VideoCrafter's ResBlock and output norms do.

    Weight and bias are cast too, so half-precision (or fp8) storage works on every device. A
    layer that can cast its own weights to the input (ComfyUI's `forward_comfy_cast_weights`, which
    also moves offloaded weights and applies weight patches) is asked to do it on the float32 input.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cast_forward = getattr(self, "forward_comfy_cast_weights", None)
        if cast_forward is not None:
            return cast_forward(x.float()).type(x.dtype)
        weight = None if self.weight is None else self.weight.to(x.device, torch.float32)
        bias = None if self.bias is None else self.bias.to(x.device, torch.float32)
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


class GroupNorm32(Float32GroupNorm, nn.GroupNorm):
    """The float32 GroupNorm of the default namespace (torch.nn.GroupNorm)."""


@functools.lru_cache(maxsize=None)
def float32_group_norm(base: type) -> type:
    """The float32 GroupNorm built on a namespace's GroupNorm class (cached per class)."""
    if base is nn.GroupNorm:
        return GroupNorm32
    return type("GroupNorm32", (Float32GroupNorm, base), {"__module__": __name__, "__qualname__": "GroupNorm32"})


# ---- raw parameters ----------------------------------------------------------------------------------


def cast_to(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A stored tensor on `like`'s device in its dtype (a no-op when they already match)."""
    return tensor.to(device=like.device, dtype=like.dtype)


class ParameterLeaf(nn.Module):
    """Raw parameters in a module of their own, with no children.

    ComfyUI's partial (low-VRAM) loader moves only leaf modules (or ops layers); a parameter held
    by a module with children would stay on the offload device. Read them with `cast(name, like)`.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype | None = None, device=None):
        super().__init__()
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, dtype=dtype, device=device)))

    def cast(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return cast_to(getattr(self, name), like)


def _rename_saved(names: dict[str, str], module, state_dict, prefix, local_metadata) -> None:
    if not any(prefix + inner in state_dict for inner in names):
        return
    items = [(prefix + names[k[len(prefix):]] if k.startswith(prefix) and k[len(prefix):] in names else k, v)
             for k, v in state_dict.items()]
    state_dict.clear()  # rebuilt in the same order: the official key order is kept
    state_dict.update(items)


def _rename_loaded(names: dict[str, str], module, state_dict, prefix, *args) -> None:
    for inner, outer in names.items():
        if prefix + outer in state_dict:
            state_dict[prefix + inner] = state_dict.pop(prefix + outer)


def rename_state_keys(module: nn.Module, names: dict[str, str]) -> None:
    """Give parameters held by `module`'s leaves their official keys: `names` maps the local name
    (e.g. "in_proj.weight") to the official one ("in_proj_weight") in state_dict() and back in
    load_state_dict(), so official checkpoints keep loading as they are."""
    module.register_state_dict_post_hook(functools.partial(_rename_saved, names))
    module.register_load_state_dict_pre_hook(functools.partial(_rename_loaded, names))


def alias(path: str) -> property:
    """A read-only attribute for a parameter that moved into a leaf ("leaf.name"), under its official name."""
    leaf, name = path.split(".")
    return property(lambda self: getattr(getattr(self, leaf), name), doc=f"`{path}` under its official name")


# ---- building --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Factory:
    """What a model's blocks are built from: the operations namespace, the storage dtype and device
    of their weights, and the attention callable; passed down to every block. It also keeps the
    model's initialisation steps in construction order (`steps`): each layer's `reset_parameters`
    as it is made, and the blocks' own steps (`init`), which hold modules, never tensors."""

    operations: Any = torch_ops
    dtype: torch.dtype | None = None
    device: torch.device | str | None = None
    attention: AttentionFn = sdpa_attention
    steps: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @classmethod
    def of(cls, operations=None, dtype=None, device=None, attention=None) -> "Factory":
        return cls(operations or torch_ops, dtype, device, attention or sdpa_attention)

    def layer(self, cls: type, *args, logged: bool = True, **kwargs) -> nn.Module:
        """cls(*args, **kwargs) with this factory's dtype and device; its own initialisation
        (`reset_parameters`) becomes a step unless `logged` is False."""
        module = cls(*args, dtype=self.dtype, device=self.device, **kwargs)
        if logged and hasattr(module, "reset_parameters"):
            self.steps.append(module.reset_parameters)
        return module

    def init(self, fn: Callable, *args) -> None:
        """Record fn(*args) as the next initialisation step (args: modules, names, numbers)."""
        self.steps.append(functools.partial(fn, *args))

    def linear(self, cin: int, cout: int, bias: bool = True, logged: bool = True) -> nn.Module:
        return self.layer(self.operations.Linear, cin, cout, bias=bias, logged=logged)

    def conv(self, dims: int, cin: int, cout: int, kernel, **kwargs) -> nn.Module:
        layer = {1: self.operations.Conv1d, 2: self.operations.Conv2d, 3: self.operations.Conv3d}[dims]
        return self.layer(layer, cin, cout, kernel, **kwargs)

    def group_norm(self, groups: int, channels: int, eps: float = 1e-5, float32: bool = False) -> nn.Module:
        layer = float32_group_norm(self.operations.GroupNorm) if float32 else self.operations.GroupNorm
        return self.layer(layer, groups, channels, eps=eps, affine=True)

    def layer_norm(self, dim: int, eps: float = 1e-5) -> nn.Module:
        return self.layer(self.operations.LayerNorm, dim, eps=eps)

    def embedding(self, count: int, dim: int) -> nn.Module:
        return self.layer(self.operations.Embedding, count, dim)

    def parameters(self, **shapes: tuple[int, ...]) -> ParameterLeaf:
        return ParameterLeaf(shapes, dtype=self.dtype, device=self.device)


# initialisation steps (they read the weights when they run, so a loaded or moved model is fine)

def zero_(layer: nn.Module) -> None:
    """Zero a layer's weight and bias (the official zero-initialised output projections)."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def normal_(module: nn.Module, name: str, std: float) -> None:
    nn.init.normal_(getattr(module, name), std=std)


def randn_(module: nn.Module, name: str, std: float) -> None:
    """The parameter set to torch.randn(shape) * std, the expression the official code (and ours,
    before) initialised it with: the same draws as then."""
    p = getattr(module, name)
    p.copy_(torch.randn(p.shape, device=p.device) * std)


def xavier_uniform_(module: nn.Module, name: str) -> None:
    nn.init.xavier_uniform_(getattr(module, name))


def constant_(module: nn.Module, name: str, value: float) -> None:
    nn.init.constant_(getattr(module, name), value)


# ---- models ----------------------------------------------------------------------------------------


def first_parameter(module: nn.Module) -> torch.Tensor | None:
    return next(module.parameters(), None)


def stored_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype the module's (first) weight is stored in; None when it holds none yet."""
    weight = first_parameter(module)
    return None if weight is None else weight.dtype


def compute_dtype(module: nn.Module, x: torch.Tensor | None = None) -> torch.dtype:
    """The dtype a model computes in: its explicit `compute_dtype` when set, else the dtype its
    weights are stored in when torch computes in it (fp32, fp16, bf16, fp64: the core's default
    path, whose torch.nn layers need inputs of their own dtype), else the input's (floating) dtype,
    else float32. fp8 storage therefore computes in the input's dtype, or float32."""
    explicit = getattr(module, "compute_dtype", None)
    if explicit is not None:
        return explicit
    stored = stored_dtype(module)
    if stored in COMPUTE_DTYPES:
        return stored
    if x is not None and x.is_floating_point():
        return x.dtype
    return torch.float32


def module_device(module: nn.Module) -> torch.device:
    """The device of the module's (first) weight, the CPU when it holds none."""
    weight = first_parameter(module)
    return torch.device("cpu") if weight is None else weight.device


def set_attention(model: nn.Module, attention: AttentionFn | None) -> None:
    """Route every softmax attention of `model` through `attention` (None: back to SDPA)."""
    for module in model.modules():
        if hasattr(module, "attention_fn"):
            module.attention_fn = attention or sdpa_attention


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


class CoreModel(nn.Module):
    """A top-level model of the core: built from a config and, optionally, an operations namespace,
    a storage dtype and device, and an attention callable.

    `compute_dtype`, None by default, fixes the dtype it computes in (see `compute_dtype()`): a host
    that stores weights in fp8 (or fp16 computed in fp32) sets it.
    """

    compute_dtype: torch.dtype | None = None

    def _factory(self, operations=None, dtype=None, device=None, attention=None) -> Factory:
        """Start of a constructor: the factory its blocks are built from."""
        factory = Factory.of(operations, dtype, device, attention)
        self._init_steps = factory.steps  # a list of callables on submodules: not registered, no cycle
        if operations is None:  # the core's default path initialises at the end, from this state
            self._rng_at_start = _rng_state()
        return factory

    def _finish(self, operations) -> None:
        """End of a constructor: the core's default path (no namespace given) initialises every
        weight, from the random state the constructor started with."""
        if operations is None:
            _set_rng_state(self.__dict__.pop("_rng_at_start"))
            self.initialize_weights()

    def initialize_weights(self) -> None:
        """Initialise every weight as the core does: each layer's own initialisation and the
        model's steps (zero output projections, relative-position tables, embeddings), in
        construction order."""
        with torch.no_grad():
            for step in self._init_steps:
                step()

    def set_attention(self, attention: AttentionFn | None) -> None:
        set_attention(self, attention)
