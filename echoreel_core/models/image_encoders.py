"""The image side of VideoCrafter's image-to-video conditioning, as plain PyTorch modules.

- `OpenCLIPVisionEncoder`: FrozenOpenCLIPImageEmbedderV2, the OpenCLIP ViT-H/14 visual tower
  returning every token of the last block (CLS + 256 patches) before ln_post/proj, plus its
  `preprocess` (kornia 0.7's anti-aliased bicubic resize to 224, then CLIP normalisation).
- `Resampler`: the IP-Adapter-Plus style perceiver (`image_proj_model`) that turns those 257
  tokens into 16 context tokens for the UNet's image cross-attention.

Parameter names equal the official state dicts once their checkpoint prefix is stripped. Layers
come from an operations namespace with a storage dtype and device (models/ops.py); raw parameters
live in leaf modules and keep their official keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import AttentionFn
from .ops import CoreModel, Factory, alias, compute_dtype, module_device, randn_, rename_state_keys
from .text_encoders import Transformer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ------------------------------------------------------------------------------------------------
# kornia 0.7 `resize(..., interpolation='bicubic', align_corners=True, antialias=True)`
# ------------------------------------------------------------------------------------------------


def gaussian_kernel1d(size: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """(size,) Gaussian weights on the odd window centred on 0, normalised to sum 1."""
    x = torch.arange(size, dtype=dtype, device=device) - size // 2
    sigma_t = torch.tensor(sigma, dtype=dtype, device=device)
    weights = torch.exp(-x.pow(2.0) / (2 * sigma_t.pow(2.0)))
    return weights / weights.sum()


def _blur_along(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """Depthwise 1-D correlation of (b, c, h, w) along dim -1 or -2, reflect-padded to same size."""
    c, k = x.shape[1], kernel.numel()
    if dim == -1:
        weight = kernel.view(1, 1, 1, k).expand(c, 1, 1, k)
        x = F.pad(x, (k // 2, k // 2, 0, 0), mode="reflect")
    else:
        weight = kernel.view(1, 1, k, 1).expand(c, 1, k, 1)
        x = F.pad(x, (0, 0, k // 2, k // 2), mode="reflect")
    return F.conv2d(x, weight.to(x.dtype), groups=c)


def gaussian_blur2d(x: torch.Tensor, kernel_size: tuple[int, int], sigma: tuple[float, float]) -> torch.Tensor:
    """Separable Gaussian blur of (b, c, h, w): along w first, then h (kornia's order)."""
    (ky, kx), (sy, sx) = kernel_size, sigma
    x = _blur_along(x, gaussian_kernel1d(kx, sx, x.dtype, x.device), dim=-1)
    return _blur_along(x, gaussian_kernel1d(ky, sy, x.dtype, x.device), dim=-2)


def antialiased_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize (align_corners=True) with kornia 0.7's Gaussian anti-aliasing.

    When either axis shrinks, both axes are first blurred with sigma = max((factor - 1) / 2, 0.001)
    (factor = in / out size) over a window of max(int(4 sigma), 3) taps made odd: a blur of the
    kind skimage uses, which the CLIP features of the I2V models were computed through.
    """
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    factors = (h / size[0], w / size[1])
    if max(factors) > 1:
        sigmas = tuple(max((f - 1.0) / 2.0, 0.001) for f in factors)
        ks = tuple(int(max(4.0 * s, 3)) for s in sigmas)
        ks = tuple(k + 1 if k % 2 == 0 else k for k in ks)
        x = gaussian_blur2d(x, ks, sigmas)
    return F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=True)


# ------------------------------------------------------------------------------------------------
# OpenCLIP ViT-H/14 visual tower
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenCLIPVisionConfig:
    """Hyper-parameters of the OpenCLIP visual tower; the defaults are ViT-H/14's."""

    width: int = 1280
    layers: int = 32
    heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    mlp_ratio: float = 4.0
    output_dim: int = 1024  # proj's output width (projection unused here)

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


class OpenCLIPVisionEncoder(CoreModel):
    """FrozenOpenCLIPImageEmbedderV2: image (b, 3, S, S), CLIP-normalised -> (b, 1 + (S/p)^2, width).

    The I2V models feed the Resampler every token of the last block, before ln_post: that is
    what forward returns. `ln_post` and `proj` are kept only so `embedder.model.visual.*` keys
    load with strict=True. `class_embedding`, `positional_embedding` and `proj` are raw parameters
    of a leaf (`raw`), saved and loaded under those official keys. operations, dtype, device,
    attention: as the UNets (models/ops.py).
    """

    RAW = ("class_embedding", "positional_embedding", "proj")
    class_embedding = alias("raw.class_embedding")
    positional_embedding = alias("raw.positional_embedding")
    proj = alias("raw.proj")

    def __init__(self, config: OpenCLIPVisionConfig = OpenCLIPVisionConfig(), dtype: torch.dtype | None = None,
                 device=None, operations=None, attention: AttentionFn | None = None):
        super().__init__()
        self.config = c = config
        f = self._factory(operations, dtype, device, attention)
        scale = c.width**-0.5
        # first, so that their keys come first, as in the official state dict
        self.raw = f.parameters(class_embedding=(c.width,), positional_embedding=(c.num_tokens, c.width),
                                proj=(c.width, c.output_dim))
        rename_state_keys(self, {f"raw.{name}": name for name in self.RAW})
        self.conv1 = f.conv(2, 3, c.width, c.patch_size, stride=c.patch_size, bias=False)
        f.init(randn_, self.raw, "class_embedding", scale)
        f.init(randn_, self.raw, "positional_embedding", scale)
        self.ln_pre = f.layer_norm(c.width, eps=1e-5)
        self.transformer = Transformer(c.width, c.layers, c.heads, c.mlp_ratio, causal=False, factory=f)
        self.ln_post = f.layer_norm(c.width, eps=1e-5)
        f.init(randn_, self.raw, "proj", scale)
        self._finish(operations)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) in [-1, 1] -> (b, 3, S, S) CLIP-normalised, as VideoCrafter prepares it."""
        size = self.config.image_size
        x = antialiased_resize(image, (size, size))
        x = (x + 1.0) / 2.0
        # constants, not buffers: a model built on the meta device has no data to move
        mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (b, 3, S, S), already preprocessed -> (b, n_tokens, width), CLS first."""
        x = self.conv1(image)  # (b, c, g, g)
        x = x.flatten(2).transpose(1, 2)  # (b, g*g, c)
        cls = self.raw.cast("class_embedding", x).expand(x.shape[0], 1, -1)  # (b, 1, c)
        x = torch.cat([cls, x], dim=1) + self.raw.cast("positional_embedding", x)  # (b, n, c)
        return self.transformer(self.ln_pre(x))

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """image (b, 3, H, W) in [-1, 1], any size -> (b, n_tokens, width) in this module's compute dtype."""
        pixels = self.preprocess(image.to(module_device(self), torch.float32))
        return self(pixels.to(compute_dtype(self, pixels)))


# ------------------------------------------------------------------------------------------------
# Resampler (VideoCrafter I2V image_proj_model)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResamplerConfig:
    """Hyper-parameters of VideoCrafter's image_proj_model."""

    dim: int = 1024
    depth: int = 4
    dim_head: int = 64
    heads: int = 12
    num_queries: int = 16
    embedding_dim: int = 1280
    output_dim: int = 1024
    ff_mult: int = 4


class PerceiverAttention(nn.Module):
    """Latents attend to [image tokens, latents]; softmax in float32 as the reference does.

    The reference scales q and k by d**-0.25 each before the product (kinder to fp16 than one
    d**-0.5 afterwards) and takes the softmax in float32; both are kept so half-precision runs
    match it. With 16 queries the explicit product is cheap.
    """

    def __init__(self, dim: int, dim_head: int, heads: int, factory: Factory | None = None):
        super().__init__()
        f = factory or Factory()
        self.heads = heads
        self.dim_head = dim_head
        inner = dim_head * heads
        self.norm1 = f.layer_norm(dim)
        self.norm2 = f.layer_norm(dim)
        self.to_q = f.linear(dim, inner, bias=False)
        self.to_kv = f.linear(dim, 2 * inner, bias=False)
        self.to_out = f.linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x (b, n, dim) image features, latents (b, m, dim) -> update for latents (b, m, dim)."""
        x = self.norm1(x)
        latents = self.norm2(latents)
        b, m, _ = latents.shape
        q = self.to_q(latents)  # (b, m, h*d)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)  # (b, n+m, h*d) each
        q, k, v = (t.view(b, -1, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))  # (b, h, *, d)
        scale = self.dim_head**-0.25
        logits = (q * scale) @ (k * scale).transpose(-1, -2)  # (b, h, m, n+m)
        weights = logits.float().softmax(dim=-1).to(logits.dtype)
        out = (weights @ v).transpose(1, 2).reshape(b, m, -1)  # (b, m, h*d)
        return self.to_out(out)


def feed_forward(dim: int, mult: int, factory: Factory | None = None) -> nn.Sequential:
    """LN -> Linear up -> GELU -> Linear down, no biases; indices 0, 1, 3 are the checkpoint's."""
    f = factory or Factory()
    return nn.Sequential(
        f.layer_norm(dim),
        f.linear(dim, dim * mult, bias=False),
        nn.GELU(),
        f.linear(dim * mult, dim, bias=False),
    )


class Resampler(CoreModel):
    """Perceiver resampler: image tokens (b, n, embedding_dim) -> (b, num_queries, output_dim).

    `latents` is a raw parameter of a leaf (`raw`), saved and loaded under its official key.
    operations, dtype, device: as the UNets (models/ops.py); its attention stays explicit (float32
    softmax, as the reference). Computes in `compute_dtype(self, tokens)`.
    """

    latents = alias("raw.latents")

    def __init__(self, config: ResamplerConfig = ResamplerConfig(), dtype: torch.dtype | None = None, device=None,
                 operations=None, attention: AttentionFn | None = None):
        super().__init__()
        self.config = c = config
        f = self._factory(operations, dtype, device, attention)
        self.raw = f.parameters(latents=(1, c.num_queries, c.dim))  # first: its key comes first, as official
        rename_state_keys(self, {"raw.latents": "latents"})
        f.init(randn_, self.raw, "latents", c.dim**-0.5)
        self.proj_in = f.linear(c.embedding_dim, c.dim)
        self.proj_out = f.linear(c.dim, c.output_dim)
        self.norm_out = f.layer_norm(c.output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(c.dim, c.dim_head, c.heads, f), feed_forward(c.dim, c.ff_mult, f)])
            for _ in range(c.depth)
        )
        self._finish(operations)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (b, n, embedding_dim) -> (b, num_queries, output_dim)."""
        tokens = tokens.to(compute_dtype(self, tokens))
        latents = self.raw.cast("latents", tokens).expand(tokens.shape[0], -1, -1)  # (b, m, dim)
        x = self.proj_in(tokens)  # (b, n, dim)
        for attn, ff in self.layers:
            latents = latents + attn(x, latents)
            latents = latents + ff(latents)
        return self.norm_out(self.proj_out(latents))
