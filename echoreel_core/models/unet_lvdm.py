"""The LVDM-short text-to-video UNet (256x256, 16 frames), the base of the official EchoReel weights.

It differs from VideoCrafter in layout, not in ideas: everything stays (b, c, t, h, w); the
spatial convolutions are Conv3d with (1, 3, 3) kernels; each attention site is one fused
SpatialTemporalTransformer whose block runs spatial self-attention, temporal self-attention,
spatial cross-attention to CLIP ViT-L text and a second temporal self-attention before the FF;
heads are 8 everywhere (d_head = c / 8); no fps, no init_attn, no temporal convolution. Like the
VideoCrafter UNet it takes an operations namespace, dtype, device and attention (models/ops.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from .attention import AttentionFn
from .layers import Attention, Downsample, FeedForward, ResBlock, Upsample, conv, timestep_embedding, unet_body
from .ops import CoreModel, Factory, compute_dtype, zero_


@dataclass(frozen=True)
class LVDMUNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_heads: int = 8
    context_dim: int = 768
    temporal_length: int = 16  # maximum relative distance of the temporal attentions
    norm_groups: int = 32


class BasicTransformerBlockST(nn.Module):
    """The fused block: spatial self, temporal self, spatial cross, temporal self, (EchoReel), FF.

    `action_integration`, when a caller sets it (EchoReel), runs after `attn2_tmp` and before the
    FF on ((b h w), t, c) tokens, exactly where the official EchoReel code injects.
    """

    def __init__(self, dim: int, heads: int, context_dim: int, temporal_length: int, factory: Factory | None = None):
        super().__init__()
        f = factory or Factory()
        dim_head = dim // heads
        self.attn1 = Attention(dim, None, heads, dim_head, factory=f)
        self.attn2 = Attention(dim, context_dim, heads, dim_head, factory=f)
        self.attn1_tmp = Attention(dim, None, heads, dim_head, relative_distance=temporal_length, factory=f)
        self.attn2_tmp = Attention(dim, None, heads, dim_head, relative_distance=temporal_length, factory=f)
        self.ff = FeedForward(dim, factory=f)
        self.norm1 = f.layer_norm(dim)
        self.norm2 = f.layer_norm(dim)
        self.norm3 = f.layer_norm(dim)
        self.norm4 = f.layer_norm(dim)
        self.norm5 = f.layer_norm(dim)
        self.action_integration = None

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # x: (b, c, t, h, w); context: ((b t), L, context_dim)
        b, _, t, h, w = x.shape
        x = rearrange(x, "b c t h w -> (b t) (h w) c")
        x = x + self.attn1(self.norm1(x))
        x = rearrange(x, "(b t) (h w) c -> (b h w) t c", b=b, h=h)
        x = x + self.attn1_tmp(self.norm4(x))
        x = rearrange(x, "(b h w) t c -> (b t) (h w) c", b=b, h=h)
        x = x + self.attn2(self.norm2(x), context)
        x = rearrange(x, "(b t) (h w) c -> (b h w) t c", b=b, h=h)
        x = x + self.attn2_tmp(self.norm5(x))
        if self.action_integration is not None:
            x = self.action_integration(x, (h, w))
        x = x + self.ff(self.norm3(x))
        return rearrange(x, "(b h w) t c -> b c t h w", b=b, h=h, w=w)


class SpatialTemporalTransformer(nn.Module):
    """GroupNorm, 1x1x1 Conv3d in, the fused block, 1x1x1 Conv3d out (zero-init), residual."""

    def __init__(self, channels: int, heads: int, context_dim: int, temporal_length: int, groups: int,
                 factory: Factory | None = None):
        super().__init__()
        f = factory or Factory()
        self.norm = f.group_norm(groups, channels, eps=1e-6)
        self.proj_in = f.conv(3, channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlockST(channels, heads, context_dim, temporal_length, f)]
        )
        self.proj_out = f.conv(3, channels, channels, 1)
        f.init(zero_, self.proj_out)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(self.norm(x))
        for block in self.transformer_blocks:
            h = block(h, context)
        return self.proj_out(h) + x


class Block(nn.ModuleList):
    """One `input_blocks.i` / `output_blocks.i` / `middle_block` entry: its layers in order.

    Training may set `gradient_checkpointing`: the block's activations are then recomputed in
    the backward pass instead of stored (same numbers, less memory)."""

    gradient_checkpointing = False

    def forward(self, x, emb, context):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, context, use_reentrant=False)
        return self._forward(x, emb, context)

    def _forward(self, x, emb, context):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, x.shape[0])
            elif isinstance(layer, SpatialTemporalTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class LVDMUNet(CoreModel):
    """UNet of LVDM short T2V: eps prediction for latents (b, 4, t, h, w).

    operations: the layer namespace (default torch.nn, then the weights are initialised); dtype,
    device: where the weights are stored; attention: the softmax attention callable (default SDPA).
    """

    def __init__(self, config: LVDMUNetConfig, dtype: torch.dtype | None = None, device=None,
                 operations=None, attention: AttentionFn | None = None):
        super().__init__()
        self.config = cfg = config
        f = self._factory(operations, dtype, device, attention)
        mc = cfg.model_channels
        emb_dim = mc * 4
        groups = cfg.norm_groups

        def resblock(cin, cout):
            return ResBlock(cin, cout, emb_dim, dims=3, groups=groups, factory=f)

        def transformer(ch):
            return SpatialTemporalTransformer(ch, cfg.num_heads, cfg.context_dim, cfg.temporal_length, groups, f)

        self.time_embed = nn.Sequential(f.linear(mc, emb_dim), nn.SiLU(), f.linear(emb_dim, emb_dim))
        self.input_blocks = nn.ModuleList([Block([conv(3, cfg.in_channels, mc, factory=f)])])
        inputs, self.middle_block, outputs, ch = unet_body(
            cfg, Block, resblock, lambda ch: [transformer(ch)],
            lambda ch: Downsample(ch, dims=3, factory=f), lambda ch: Upsample(ch, dims=3, factory=f))
        self.input_blocks.extend(inputs)
        self.output_blocks = nn.ModuleList(outputs)

        self.out = nn.Sequential(f.group_norm(groups, ch, float32=True), nn.SiLU(),
                                 conv(3, mc, cfg.out_channels, factory=f))
        f.init(zero_, self.out[-1])
        self._finish(operations)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, fps=None) -> torch.Tensor:
        """x: (b, 4, t, h, w); timesteps: (b,); context: (b, 77, 768). `fps` is accepted and ignored (LVDM has none).
        Computes in `compute_dtype(self, x)` (ops.py); returns x's dtype."""
        t = x.shape[2]
        dtype = compute_dtype(self, x)
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))  # (b, 4 mc)
        context = context.to(dtype).repeat_interleave(t, dim=0)  # ((b t), L, c), batch-major
        h = x.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h).to(x.dtype)
