"""Building blocks shared by the VideoCrafter and LVDM UNets (and the Action Prism).

Attribute names are the official ones (`to_out.0`, `ff.net.0.proj`, `relative_position_k`,
`in_layers`, `temopral_conv` ...) because the official checkpoints load by them. Every block takes
`factory` (models/ops.py: operations namespace, storage dtype and device, attention callable),
which its model passes down; built alone it uses torch.nn and SDPA. Blocks never touch a weight in
their constructor: they record the initialisation that differs from their layers' defaults
(`factory.init`), which the model's `initialize_weights()` runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .attention import relative_attention
from .ops import Factory, cast_to, xavier_uniform_, zero_


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding laid out [cos | sin] (the official order), computed in float32: (n,) -> (n, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GEGLU(nn.Module):
    """Linear to 2*inner, then value * gelu(gate) with the value in the first half (exact erf GELU)."""

    def __init__(self, dim_in: int, dim_out: int, factory: Factory | None = None):
        super().__init__()
        self.proj = (factory or Factory()).linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with 4x inner width; keys `net.0.proj` and `net.2`."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0, factory: Factory | None = None):
        super().__init__()
        factory = factory or Factory()
        self.net = nn.Sequential(GEGLU(dim, dim * mult, factory), nn.Dropout(dropout), factory.linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RelativePosition(nn.Module):
    """Learned table of (2*max_distance+1, d) relative-position vectors, shared by all heads: a leaf
    of one raw parameter, cast to the activation where it is used (`table_for`)."""

    def __init__(self, num_units: int, max_distance: int, factory: Factory | None = None):
        super().__init__()
        factory = factory or Factory()
        self.embeddings_table = nn.Parameter(
            torch.empty(2 * max_distance + 1, num_units, dtype=factory.dtype, device=factory.device)
        )
        factory.init(xavier_uniform_, self, "embeddings_table")

    def table_for(self, x: torch.Tensor) -> torch.Tensor:
        return cast_to(self.embeddings_table, x)


class Attention(nn.Module):
    """Multi-head attention with the official layout (`to_q`, `to_k`, `to_v`, `to_out.0`).

    Options, each as in the official code:
    - `relative_distance`: Shaw relative positions (temporal layers of VideoCrafter1 and LVDM).
    - `image_tokens`: the I2V decoupled image cross-attention. The context is 77 text tokens followed
      by image tokens; the image tokens get their own `to_k_ip` / `to_v_ip` and their own softmax,
      and the two results are summed (scale 1.0) before `to_out`.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        relative_distance: int | None = None,
        image_tokens: bool = False,
        text_context_len: int = 77,
        factory: Factory | None = None,
    ):
        super().__init__()
        factory = factory or Factory()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.attention_fn = factory.attention
        self.to_q = factory.linear(query_dim, inner, bias=False)
        self.to_k = factory.linear(context_dim, inner, bias=False)
        self.to_v = factory.linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(factory.linear(inner, query_dim), nn.Dropout(0.0))
        self.image_tokens = image_tokens
        self.text_context_len = text_context_len
        if image_tokens:
            self.to_k_ip = factory.linear(context_dim, inner, bias=False)
            self.to_v_ip = factory.linear(context_dim, inner, bias=False)
        self.relative = relative_distance is not None
        if self.relative:
            self.relative_position_k = RelativePosition(dim_head, relative_distance, factory)
            self.relative_position_v = RelativePosition(dim_head, relative_distance, factory)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x: (b, n, c); context: (b, m, c_ctx) or None for self-attention
        context = x if context is None else context
        q = self.to_q(x)
        if self.image_tokens:
            text, image = context[:, : self.text_context_len], context[:, self.text_context_len :]
            out = self.attention_fn(q, self.to_k(text), self.to_v(text), self.heads)
            out = out + self.attention_fn(q, self.to_k_ip(image), self.to_v_ip(image), self.heads)
        elif self.relative:  # explicit: the value term needs the softmax weights
            out = relative_attention(
                q,
                self.to_k(context),
                self.to_v(context),
                self.heads,
                self.relative_position_k.table_for(q),
                self.relative_position_v.table_for(q),
            )
        else:
            out = self.attention_fn(q, self.to_k(context), self.to_v(context), self.heads)
        return self.to_out(out)


def conv(dims: int, cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int = 1,
         factory: Factory | None = None) -> nn.Module:
    """A spatial convolution: Conv2d on frames (VideoCrafter), or Conv3d with a (1, k, k) kernel (LVDM)."""
    factory = factory or Factory()
    if dims == 2:
        return factory.conv(2, cin, cout, kernel, stride=stride, padding=padding)
    return factory.conv(3, cin, cout, (1, kernel, kernel), stride=(1, stride, stride), padding=(0, padding, padding))


class TemporalConvBlock(nn.Module):
    """VideoCrafter2/I2V temporal convolution: four (3,1,1) Conv3d stages with an inner residual.

    Its GroupNorms are plain (no float32 cast, eps 1e-5), as official; the last conv starts at zero.
    """

    def __init__(self, channels: int, groups: int = 32, dropout: float = 0.1, factory: Factory | None = None):
        super().__init__()
        factory = factory or Factory()

        def stage(with_dropout: bool) -> nn.Sequential:
            layers = [factory.group_norm(groups, channels), nn.SiLU()]
            if with_dropout:
                layers.append(nn.Dropout(dropout))
            layers.append(factory.conv(3, channels, channels, (3, 1, 1), padding=(1, 0, 0)))
            return nn.Sequential(*layers)

        self.conv1 = stage(False)
        self.conv2 = stage(True)
        self.conv3 = stage(True)
        self.conv4 = stage(True)
        factory.init(zero_, self.conv4[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (b, c, t, h, w)
        return self.conv4(self.conv3(self.conv2(self.conv1(x)))) + x


class ResBlock(nn.Module):
    """Time-conditioned residual block (plain add of the embedding, no scale-shift).

    `dims=2` runs on frames as batch, (b t) c h w, with a per-frame embedding (VideoCrafter);
    `dims=3` runs on b c t h w with a per-sample embedding (LVDM). The optional temporal
    convolution (VideoCrafter2, I2V) acts on the whole block output and needs the batch size.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        emb_dim: int,
        dims: int = 2,
        groups: int = 32,
        temporal_conv: bool = False,
        factory: Factory | None = None,
    ):
        super().__init__()
        f = factory or Factory()
        self.in_layers = nn.Sequential(f.group_norm(groups, cin, float32=True), nn.SiLU(),
                                       conv(dims, cin, cout, factory=f))
        self.emb_layers = nn.Sequential(nn.SiLU(), f.linear(emb_dim, cout))
        self.out_layers = nn.Sequential(f.group_norm(groups, cout, float32=True), nn.SiLU(), nn.Dropout(0.0),
                                        conv(dims, cout, cout, factory=f))
        f.init(zero_, self.out_layers[-1])
        self.skip_connection = nn.Identity() if cin == cout else conv(dims, cin, cout, kernel=1, padding=0, factory=f)
        if temporal_conv:
            self.temopral_conv = TemporalConvBlock(cout, groups, factory=f)  # sic: the official key spelling

    def forward(self, x: torch.Tensor, emb: torch.Tensor, batch_size: int) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        h = h + emb_out.view(*emb_out.shape, *([1] * (h.dim() - 2)))
        h = self.skip_connection(x) + self.out_layers(h)
        if hasattr(self, "temopral_conv"):
            h = rearrange(h, "(b t) c h w -> b c t h w", b=batch_size)
            h = rearrange(self.temopral_conv(h), "b c t h w -> (b t) c h w")
        return h


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (spatial only)."""

    def __init__(self, channels: int, dims: int = 2, factory: Factory | None = None):
        super().__init__()
        self.op = conv(dims, channels, channels, stride=2, factory=factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 (spatial only), then a 3x3 convolution."""

    def __init__(self, channels: int, dims: int = 2, factory: Factory | None = None):
        super().__init__()
        self.dims = dims
        self.conv = conv(dims, channels, channels, factory=factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 3:  # (b, c, t, h, w): keep t
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x)


def unet_body(cfg, block, resblock, attention, downsample, upsample) -> tuple[list, nn.Module, list, int]:
    """The official layout both UNets share after their first input block.

    Per level of `cfg.channel_mult`: `num_res_blocks` blocks of a ResBlock, followed by
    `attention(ch)`'s layers where the downscale is in `attention_resolutions`, and a Downsample
    block between levels; the middle block (ResBlock, attention, ResBlock); then the output blocks
    mirroring them on the skip connections, an Upsample ending every level but the last. `block`
    makes a block of layers, `resblock(cin, cout)`, `downsample(ch)` and `upsample(ch)` the layers.
    Returns (the input blocks after the first, the middle block, the output blocks, their width),
    each made in the official order (the order of the state dict's keys)."""
    mc = cfg.model_channels
    inputs, skip_channels = [], [mc]
    ch, ds = mc, 1
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            layers = [resblock(ch, mult * mc)]
            ch = mult * mc
            if ds in cfg.attention_resolutions:
                layers += attention(ch)
            inputs.append(block(layers))
            skip_channels.append(ch)
        if level != len(cfg.channel_mult) - 1:
            inputs.append(block([downsample(ch)]))
            skip_channels.append(ch)
            ds *= 2
    middle = block([resblock(ch, ch), *attention(ch), resblock(ch, ch)])
    outputs = []
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
        for i in range(cfg.num_res_blocks + 1):
            layers = [resblock(ch + skip_channels.pop(), mult * mc)]
            ch = mult * mc
            if ds in cfg.attention_resolutions:
                layers += attention(ch)
            if level and i == cfg.num_res_blocks:
                layers.append(upsample(ch))
                ds //= 2
            outputs.append(block(layers))
    return inputs, middle, outputs, ch
