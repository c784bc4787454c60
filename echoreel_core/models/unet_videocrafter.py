"""The VideoCrafter1/2 UNet3D (T2V 512, T2V 1024, I2V 512, VideoCrafter2 T2V 512).

Spatial layers run on frames as batch, (b t) c h w; each attention site is a SpatialTransformer
(self-attention, cross-attention to the text) followed by a TemporalTransformer (two temporal
self-attentions), with `init_attn` (one more TemporalTransformer) right after the input conv.
Module and parameter names are the official ones so that `model.diffusion_model.*` of the
official checkpoints loads strictly. The model takes an operations namespace, a storage dtype and
device and an attention callable (models/ops.py), as ComfyUI's own UNet does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from .attention import AttentionFn
from .layers import Attention, Downsample, FeedForward, ResBlock, Upsample, timestep_embedding, unet_body
from .ops import CoreModel, Factory, compute_dtype, zero_


@dataclass(frozen=True)
class VideoCrafterUNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    head_channels: int = 64  # heads = channels // head_channels
    context_dim: int = 1024
    temporal_length: int = 16  # also the maximum relative distance
    relative_position: bool = False  # VideoCrafter1 T2V
    temporal_conv: bool = False  # VideoCrafter2, I2V
    fps_cond: bool = False  # VideoCrafter2, I2V, VideoCrafter1 1024
    image_cross_attention: bool = False  # I2V
    init_attn_heads: int = 8  # init_attn has 8 heads of 64 whatever the width
    init_attn_head_channels: int = 64
    norm_groups: int = 32


class BasicTransformerBlock(nn.Module):
    """Pre-LN block: attn1, attn2 (cross or second self-attention), GEGLU FF.

    In temporal transformers attn2 is a second self-attention. `action_integration`, when a
    caller sets it (EchoReel), runs between attn2 and the FF of temporal blocks.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None, factory: Factory | None = None,
                 **attention_options):
        super().__init__()
        f = factory or Factory()
        image_tokens = attention_options.pop("image_tokens", False)
        self.attn1 = Attention(dim, None, heads, dim_head, factory=f, **attention_options)
        self.attn2 = Attention(dim, context_dim, heads, dim_head, image_tokens=image_tokens, factory=f,
                               **attention_options)
        self.ff = FeedForward(dim, factory=f)
        self.norm1 = f.layer_norm(dim)
        self.norm2 = f.layer_norm(dim)
        self.norm3 = f.layer_norm(dim)
        self.action_integration = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                grid: tuple[int, int] | None = None) -> torch.Tensor:
        # grid: the (h, w) of the ((b h w), t, c) tokens of a temporal block, for action_integration
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        if self.action_integration is not None:
            x = self.action_integration(x, grid)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm, Linear in, one block over the h*w tokens of each frame, Linear out (zero-init), residual."""

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int, groups: int, image_tokens: bool,
                 factory: Factory | None = None):
        super().__init__()
        f = factory or Factory()
        inner = heads * dim_head
        self.norm = f.group_norm(groups, channels, eps=1e-6)
        self.proj_in = f.linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, context_dim, factory=f, image_tokens=image_tokens)]
        )
        self.proj_out = f.linear(inner, channels)
        f.init(zero_, self.proj_out)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # x: ((b t), c, h, w); context: ((b t), L, context_dim)
        _, _, h, w = x.shape
        tokens = self.proj_in(rearrange(self.norm(x), "n c h w -> n (h w) c"))
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return rearrange(self.proj_out(tokens), "n (h w) c -> n c h w", h=h, w=w) + x


class TemporalTransformer(nn.Module):
    """Self-attention across the t frames of every spatial position; never sees the text.

    `linear=False` is `init_attn`, whose projections are Conv1d(kernel 1) in the official code.
    """

    def __init__(self, channels: int, heads: int, dim_head: int, groups: int, relative_distance: int | None,
                 linear=True, factory: Factory | None = None):
        super().__init__()
        f = factory or Factory()
        inner = heads * dim_head
        self.linear = linear
        self.norm = f.group_norm(groups, channels, eps=1e-6)
        self.proj_in = f.linear(channels, inner) if linear else f.conv(1, channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, None, factory=f, relative_distance=relative_distance)]
        )
        self.proj_out = f.linear(inner, channels) if linear else f.conv(1, inner, channels, 1)
        f.init(zero_, self.proj_out)

    def _project(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # x: (n, t, c); Conv1d wants channels first
        return layer(x) if self.linear else layer(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        # x: ((b t), c, h, w); the norm's statistics span all frames of a sample
        video = rearrange(x, "(b t) c h w -> b c t h w", b=batch_size)
        _, _, _, h, w = video.shape
        tokens = self._project(self.proj_in, rearrange(self.norm(video), "b c t h w -> (b h w) t c"))
        for block in self.transformer_blocks:
            tokens = block(tokens, grid=(h, w))
        tokens = self._project(self.proj_out, tokens)
        out = rearrange(tokens, "(b h w) t c -> (b t) c h w", b=batch_size, h=h, w=w)
        return out + x


class Block(nn.ModuleList):
    """One `input_blocks.i` / `output_blocks.i` / `middle_block` entry: its layers in order.

    Training may set `gradient_checkpointing`: the block's activations are then recomputed in
    the backward pass instead of stored (same numbers, less memory)."""

    gradient_checkpointing = False

    def forward(self, x, emb, context, batch_size):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, context, batch_size, use_reentrant=False)
        return self._forward(x, emb, context, batch_size)

    def _forward(self, x, emb, context, batch_size):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, batch_size)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, TemporalTransformer):
                x = layer(x, batch_size)
            else:
                x = layer(x)
        return x


class VideoCrafterUNet(CoreModel):
    """UNet3D of VideoCrafter1/2: eps prediction for latents (b, 4, t, h, w).

    operations: the layer namespace (default torch.nn, then the weights are initialised); dtype,
    device: where the weights are stored; attention: the softmax attention callable (default SDPA).
    """

    def __init__(self, config: VideoCrafterUNetConfig, dtype: torch.dtype | None = None, device=None,
                 operations=None, attention: AttentionFn | None = None):
        super().__init__()
        self.config = cfg = config
        f = self._factory(operations, dtype, device, attention)
        mc = cfg.model_channels
        emb_dim = mc * 4
        groups = cfg.norm_groups
        rel = cfg.temporal_length if cfg.relative_position else None

        def resblock(cin, cout):
            return ResBlock(cin, cout, emb_dim, dims=2, groups=groups, temporal_conv=cfg.temporal_conv, factory=f)

        def attention_layers(ch):
            heads = ch // cfg.head_channels
            return [
                SpatialTransformer(ch, heads, cfg.head_channels, cfg.context_dim, groups, cfg.image_cross_attention, f),
                TemporalTransformer(ch, heads, cfg.head_channels, groups, rel, factory=f),
            ]

        self.time_embed = nn.Sequential(f.linear(mc, emb_dim), nn.SiLU(), f.linear(emb_dim, emb_dim))
        if cfg.fps_cond:
            self.fps_embedding = nn.Sequential(f.linear(mc, emb_dim), nn.SiLU(), f.linear(emb_dim, emb_dim))

        self.input_blocks = nn.ModuleList([Block([f.conv(2, cfg.in_channels, mc, 3, padding=1)])])
        self.init_attn = Block(
            [TemporalTransformer(mc, cfg.init_attn_heads, cfg.init_attn_head_channels, groups, rel, linear=False,
                                 factory=f)]
        )
        inputs, self.middle_block, outputs, ch = unet_body(
            cfg, Block, resblock, attention_layers, lambda ch: Downsample(ch, factory=f), lambda ch: Upsample(ch, factory=f))
        self.input_blocks.extend(inputs)
        self.output_blocks = nn.ModuleList(outputs)

        self.out = nn.Sequential(f.group_norm(groups, ch, float32=True), nn.SiLU(),
                                 f.conv(2, mc, cfg.out_channels, 3, padding=1))
        f.init(zero_, self.out[-1])
        self._finish(operations)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        fps: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """x: (b, 4, t, h, w) noisy latents; timesteps: (b,); context: (b, L, context_dim); fps: (b,) or int.
        Computes in `compute_dtype(self, x)` (ops.py); returns x's dtype."""
        b, _, t, _, _ = x.shape
        dtype = compute_dtype(self, x)
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        if self.config.fps_cond:
            if fps is None:
                raise ValueError("this model is fps-conditioned: pass fps (an int or a (b,) tensor)")
            fps = torch.full_like(timesteps, fps) if isinstance(fps, int) else fps.to(timesteps.device)
            emb = emb + self.fps_embedding(timestep_embedding(fps, self.config.model_channels).to(dtype))
        # per-frame copies, batch-major: row = sample * t + frame
        context = context.to(dtype).repeat_interleave(t, dim=0)  # ((b t), L, c)
        emb = emb.repeat_interleave(t, dim=0)  # ((b t), 4 * model_channels)

        h = rearrange(x, "b c t h w -> (b t) c h w").to(dtype)
        skips = []
        for index, block in enumerate(self.input_blocks):
            h = block(h, emb, context, b)
            if index == 0:
                h = self.init_attn(h, emb, context, b)
            skips.append(h)
        h = self.middle_block(h, emb, context, b)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, b)
        return rearrange(self.out(h), "(b t) c h w -> b c t h w", b=b).to(x.dtype)
