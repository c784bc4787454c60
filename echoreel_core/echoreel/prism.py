"""The Action Prism (the official `Perceiver`, key prefix `video_inject_process.`).

It distils motion from the CLEAN latents of a reference clip (never noised, no timestep input)
and the text: 18 pre-LN layers over (frames x h*w) tokens of width 640, each running spatial
self-attention, FF, temporal self-attention with relative positions, FF, spatial
cross-attention to the text, FF, a second temporal self-attention, FF. Its output `Tout` is one
token per reference frame, (b, t, h*w*c): every spatial position's c channels of that frame.

Official details kept: the text is cat(prompt tokens, reference caption tokens) through
`input_to_latent`; heads are 8 x 80 (the constructor's d_head=40 is dead code officially);
`latent_to_T` is three Linear layers with no activation between them. The `Sout` head
(`latent_to_S`) is kept so that the official weights load, but nothing uses its output, so it is
never computed. Layers come from an operations namespace with a storage dtype and device, the
spatial attentions use an attention callable (models/ops.py); the temporal ones stay explicit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from ..models.attention import AttentionFn
from ..models.layers import Attention, FeedForward
from ..models.ops import CoreModel, Factory, compute_dtype


@dataclass(frozen=True)
class ActionPrismConfig:
    text_dim: int = 768  # the base model's text width (CLIP-L 768, OpenCLIP-H 1024)
    latent_text_dim: int = 768  # after `input_to_latent`
    latent_dim: int = 640
    heads: int = 8
    head_dim: int = 80
    layers: int = 18
    latent_channels: int = 4  # the VAE latent channels
    frames: int = 16  # also the maximum relative distance of the temporal attentions
    latent_height: int = 32  # the reference latent size the weights were trained for
    latent_width: int = 32

    @property
    def tout_dim(self) -> int:
        """Width of one reference-frame token: h * w * c of the reference latent."""
        return self.latent_height * self.latent_width * self.latent_channels


class PrismLayer(nn.Module):
    """One `net.{i}`: four pre-LN attentions, each followed by a GEGLU FF."""

    def __init__(self, cfg: ActionPrismConfig, factory: Factory | None = None):
        super().__init__()
        f = factory or Factory()
        d, heads, head = cfg.latent_dim, cfg.heads, cfg.head_dim
        self.attn1 = Attention(d, None, heads, head, factory=f)
        self.attn2 = Attention(d, cfg.latent_text_dim, heads, head, factory=f)
        self.attn1_tmp = Attention(d, None, heads, head, relative_distance=cfg.frames, factory=f)
        self.attn2_tmp = Attention(d, None, heads, head, relative_distance=cfg.frames, factory=f)
        for i in range(1, 5):
            setattr(self, f"ff{i}", FeedForward(d, factory=f))
        for i in range(1, 9):
            setattr(self, f"norm{i}", f.layer_norm(d))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        # x: (b, t, l, d) with l = h*w; text: ((b t), L, latent_text_dim)
        b, t, l, _ = x.shape
        x = rearrange(x, "b t l d -> (b t) l d")
        x = x + self.attn1(self.norm1(x))
        x = x + self.ff1(self.norm2(x))
        x = rearrange(x, "(b t) l d -> (b l) t d", b=b)
        x = x + self.attn1_tmp(self.norm3(x))
        x = x + self.ff2(self.norm4(x))
        x = rearrange(x, "(b l) t d -> (b t) l d", b=b)
        x = x + self.attn2(self.norm5(x), text)
        x = x + self.ff3(self.norm6(x))
        x = rearrange(x, "(b t) l d -> (b l) t d", b=b)
        x = x + self.attn2_tmp(self.norm7(x))
        x = x + self.ff4(self.norm8(x))
        return rearrange(x, "(b l) t d -> b t l d", b=b)


def _output_head(cfg: ActionPrismConfig, f: Factory) -> nn.Sequential:
    """latent_dim -> 4*latent_dim -> 4*latent_dim -> channels, with no activation (as official)."""
    d = cfg.latent_dim
    return nn.Sequential(f.linear(d, 4 * d), f.linear(4 * d, 4 * d), f.linear(4 * d, cfg.latent_channels))


class ActionPrism(CoreModel):
    """operations, dtype, device, attention: as the UNets (models/ops.py); computes in
    `compute_dtype(self, latents)`."""

    gradient_checkpointing = False  # training may set it: each layer is recomputed in backward

    def __init__(self, config: ActionPrismConfig, dtype: torch.dtype | None = None, device=None, operations=None,
                 attention: AttentionFn | None = None, factory: Factory | None = None):
        """factory: build from (and record initialisation into) a containing model's factory instead."""
        super().__init__()
        self.config = cfg = config
        if factory is not None:
            f, operations, first_step = factory, factory.operations, len(factory.steps)
        else:
            f = self._factory(operations, dtype, device, attention)
        self.input_to_latent = f.linear(cfg.text_dim, cfg.latent_text_dim)
        self.video_to_latent = f.linear(cfg.latent_channels, cfg.latent_dim)
        self.net = nn.ModuleList([PrismLayer(cfg, f) for _ in range(cfg.layers)])
        self.latent_to_T = _output_head(cfg, f)
        self.latent_to_S = _output_head(cfg, f)  # official Sout head: loaded, never computed
        if factory is not None:
            self._init_steps = factory.steps[first_step:]  # its own steps; the container runs them all
        self._finish(operations)

    def forward(self, text: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """text: (b, L, text_dim) = cat(prompt, reference caption); latents: clean (b, c, t, h, w).

        Returns Tout (b, t, h*w*c), feature index = c_count * (y * w + x) + channel as official.
        """
        cfg = self.config
        b, c, t, h, w = latents.shape
        if (c, h, w) != (cfg.latent_channels, cfg.latent_height, cfg.latent_width):
            raise ValueError(
                f"the Action Prism was trained on reference latents of {cfg.latent_channels}x"
                f"{cfg.latent_height}x{cfg.latent_width} (c x h x w), got {c}x{h}x{w}: resize the "
                f"reference video to {cfg.latent_height * 8}x{cfg.latent_width * 8} pixels"
            )
        dtype = compute_dtype(self, latents)
        text = self.input_to_latent(text.to(dtype)).repeat_interleave(t, dim=0)  # ((b t), L, d_text)
        x = self.video_to_latent(rearrange(latents.to(dtype), "b c t h w -> b t (h w) c"))  # (b, t, l, d)
        for layer in self.net:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, text, use_reentrant=False)
            else:
                x = layer(x, text)
        tout = self.latent_to_T(x)  # (b, t, l, c)
        return rearrange(tout, "b t l c -> b t (l c)")
