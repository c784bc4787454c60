"""Action Integration: the new layers inside the frozen UNet, and attaching them.

At every site, after the block's second temporal attention and before its FF, on tokens laid
out ((b h w), t, c):

    x = x + strength * video_inject_attn3_tmp(video_inject_norm7(x), context=reference tokens)

a temporal cross-attention with relative positions from each generated frame to the reference
frames, whose output projection starts at zero, so an untrained model is exactly the base.

Sites:
- LVDM (official): the 16 fused SpatialTemporalTransformer blocks,
  `{input_blocks.i|middle_block|output_blocks.i}.1.transformer_blocks.0.video_inject_*`.
- VideoCrafter (our choice; the official VideoCrafter code is unreleased): the 16 temporal
  transformers' blocks (not `init_attn`), after their second temporal attention, the same place
  in the same layout as LVDM's: `{...}.2.transformer_blocks.0.video_inject_*`. Heads follow the
  host block (VideoCrafter: 64-wide heads; LVDM: 8 heads).

Position-aware queries (`query_positions`, off for every official configuration): a fixed 2D
sinusoidal code of each token's (y, x) is added to the normed tokens before `to_q`. The values
reach every position of a frame alike, so the layers can only place the reference's motion
where the queries know where they are; a real VideoCrafter UNet's features do, the toy model's
8x8 ones hardly (README, the toy model). No parameters, so zero-init identity still holds.

`video_inject_attn3` and `video_inject_norm6` (the official spatial branch, whose input is
hard-wired to None) exist only so that the official weights load; they are never run.

Attaching sets a plain callable (not a module) on each block's `action_integration` slot and
detaching puts None back, so the base UNet's parameters and state dict never change.

The layers come from an operations namespace with a storage dtype and device (models/ops.py);
the zero output projections are initialisation steps, which the core's default path runs
(EchoReel(config) without a namespace).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..models.attention import relative_attention
from ..models.layers import Attention
from ..models.ops import Factory, compute_dtype, zero_
from ..models.unet_lvdm import BasicTransformerBlockST, LVDMUNet
from ..models.unet_videocrafter import TemporalTransformer


@dataclass(frozen=True)
class Site:
    path: str  # the block's path inside the UNet, e.g. "input_blocks.1.1.transformer_blocks.0"
    channels: int
    heads: int


def integration_sites(unet: nn.Module) -> tuple[Site, ...]:
    """The blocks that take Action Integration, in state-dict order."""
    sites = []
    if isinstance(unet, LVDMUNet):
        for name, module in unet.named_modules():
            if isinstance(module, BasicTransformerBlockST):
                sites.append(Site(name, module.norm1.normalized_shape[0], module.attn1.heads))
    else:
        for name, module in unet.named_modules():
            if isinstance(module, TemporalTransformer) and not name.startswith("init_attn"):
                block = module.transformer_blocks[0]
                sites.append(Site(f"{name}.transformer_blocks.0", block.norm1.normalized_shape[0], block.attn1.heads))
    return tuple(sites)


@functools.lru_cache(maxsize=64)
def position_code(height: int, width: int, channels: int, device: torch.device = torch.device("cpu"),
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(height * width, channels) in (y, x) row-major order: sin and cos of x and of y at the
    frequencies pi * k / size, k = 1..4, repeated over the channels. Cached per grid, device and
    dtype: every sampling step asks for the same few codes."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    waves = []
    for k in range(math.ceil(channels / 4)):
        fx, fy = math.pi * (k % 4 + 1) / width, math.pi * (k % 4 + 1) / height
        waves += [torch.sin(fx * xs), torch.cos(fx * xs), torch.sin(fy * ys), torch.cos(fy * ys)]
    return torch.stack(waves[:channels], dim=-1).reshape(height * width, channels).to(device, dtype)


class ActionIntegration(nn.Module):
    """The EchoReel layers of one site, with the official attribute names."""

    def __init__(self, site: Site, tout_dim: int, frames: int, latent_channels: int, query_positions: bool = False,
                 factory: Factory | None = None):
        super().__init__()
        f = factory or Factory()
        self.query_positions = query_positions
        c, heads = site.channels, site.heads
        self.video_inject_attn3 = Attention(c, frames * latent_channels, heads, c // heads, factory=f)  # dead (Sout)
        self.video_inject_attn3_tmp = Attention(c, tout_dim, heads, c // heads, relative_distance=frames, factory=f)
        self.video_inject_norm6 = f.layer_norm(c)  # dead
        self.video_inject_norm7 = f.layer_norm(c)
        # the output projections start at zero: attached untrained, the model is exactly the base
        f.init(zero_, self.video_inject_attn3.to_out[0])
        f.init(zero_, self.video_inject_attn3_tmp.to_out[0])

    def project_reference(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference tokens (b, n_ref, tout_dim) -> their keys and values (b, n_ref, c): once per run."""
        attn = self.video_inject_attn3_tmp
        return attn.to_k(tokens), attn.to_v(tokens)

    def forward(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, key_positions: torch.Tensor,
        grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """The residual to add: x ((b h w), t, c) on an (h, w) grid; keys/values (b, n_ref, c) of
        each sample's reference."""
        attn = self.video_inject_attn3_tmp
        normed = self.video_inject_norm7(x)
        if self.query_positions:
            if grid is None or x.shape[0] % (grid[0] * grid[1]):
                raise ValueError(f"position-aware queries need the (h, w) grid of the {x.shape[0]} token rows, got {grid}")
            code = position_code(*grid, x.shape[-1], x.device, x.dtype)  # (h*w, c)
            normed = (normed.unflatten(0, (-1, grid[0] * grid[1])) + code[:, None]).flatten(0, 1)
        q = attn.to_q(normed)
        out = relative_attention(
            q, keys, values, attn.heads,
            attn.relative_position_k.table_for(q), attn.relative_position_v.table_for(q),
            key_positions,
        )
        return attn.to_out(out)


class SiteHook:
    """What one block calls between its second temporal attention and its FF while attached."""

    def __init__(self, layer: ActionIntegration, attachment: "Attachment"):
        self.layer = layer
        self.attachment = attachment
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def bind(self, tokens: torch.Tensor) -> None:
        """Project once, in the layer's compute dtype (EchoReel may be kept in another dtype than the UNet)."""
        self.keys, self.values = self.layer.project_reference(tokens.to(compute_dtype(self.layer, tokens)))

    def __call__(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        state = self.attachment
        if not state.active or state.strength == 0.0:
            return x
        if self.keys is None:
            raise RuntimeError("EchoReel is attached but no action features are bound: call bind() first")
        if x.shape[0] % self.keys.shape[0]:
            raise ValueError(
                f"the UNet batch holds {x.shape[0]} token rows, not a multiple of the "
                f"{self.keys.shape[0]} bound reference feature sets"
            )
        residual = self.layer(x.to(self.keys.dtype), self.keys, self.values, state.key_positions, grid)  # no-op casts
        return x + state.strength * residual.to(x.dtype)  # when EchoReel and the UNet share a dtype


class Attachment:
    """EchoReel attached to a UNet: its hooks, the bound features, strength and on/off state.

    Use as a context manager (or call detach()): detaching restores every block exactly.
    """

    def __init__(self, unet: nn.Module, layers: nn.ModuleList, sites: tuple[Site, ...], strength: float = 1.0):
        self.unet = unet
        self.strength = strength
        self.active = True
        self.key_positions: torch.Tensor | None = None
        self.hooks = []
        modules = dict(unet.named_modules())
        self.blocks = [modules[site.path] for site in sites]
        for block in self.blocks:
            if block.action_integration is not None:
                raise RuntimeError("this UNet already has EchoReel attached: detach it first")
        for block, layer in zip(self.blocks, layers):
            hook = SiteHook(layer, self)
            block.action_integration = hook
            self.hooks.append(hook)

    def bind(self, tokens: torch.Tensor, frames_per_reference: int) -> None:
        """Project the reference tokens (b, n_ref, tout_dim) to keys/values at every site, once.

        With several references concatenated along n_ref, each reference's frame j keeps
        position j (positions repeat every `frames_per_reference`), so each reference stays
        aligned in time with the generated frames."""
        self.key_positions = torch.arange(tokens.shape[1], device=tokens.device) % frames_per_reference
        for hook in self.hooks:
            hook.bind(tokens)

    def detach(self) -> None:
        for block in self.blocks:
            block.action_integration = None
        self.hooks = []

    def __enter__(self) -> "Attachment":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()
