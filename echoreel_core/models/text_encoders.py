"""The two frozen text towers the video models condition on, as plain PyTorch modules.

- `OpenCLIPTextEncoder`: VideoCrafter's FrozenOpenCLIPEmbedder (OpenCLIP ViT-H/14 text tower,
  layer="penultimate"): the hidden states after all but the last block, then ln_final.
- `CLIPTextEncoder`: LVDM's FrozenCLIPEmbedder (HF CLIPTextModel of openai/clip-vit-large-patch14,
  layer="last"): last_hidden_state.

Parameter names equal the official state dicts once their checkpoint prefix is stripped, so the
weights load with strict=True. Both towers return all 77 positions: the UNet cross-attends to the
whole sequence, padding included, exactly as the models were trained.

The OpenCLIP residual block (`ResidualAttentionBlock`) and stack (`Transformer`) are shared with
the vision tower in image_encoders.py. Layers come from an operations namespace with a storage dtype
and device (models/ops.py); OpenCLIP's raw parameters live in leaf modules and keep their official
keys. The causal attention of both towers stays explicit (SDPA's causal mask); the vision tower's
attention goes through the model's attention callable.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import AttentionFn
from .ops import (
    CoreModel, Factory, alias, compute_dtype, constant_, module_device, normal_, randn_, rename_state_keys, zero_,
)

if TYPE_CHECKING:
    from .tokenizer import CLIPTokenizer


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Causal multi-head attention, scale d**-0.5; (b, n, h*d) in and out.

    The project's `attention` entry point has no mask argument and only text towers need one, so
    they call SDPA's built-in causal mask directly.
    """
    b, n, inner = q.shape
    q, k, v = (t.view(b, n, heads, inner // heads).transpose(1, 2) for t in (q, k, v))  # (b, h, n, d)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return out.transpose(1, 2).reshape(b, n, inner)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU, which CLIP-L was trained with."""
    return x * torch.sigmoid(1.702 * x)


# ------------------------------------------------------------------------------------------------
# OpenCLIP building blocks (shared with the vision tower)
# ------------------------------------------------------------------------------------------------


def _init_in_proj(layer: nn.Module) -> None:
    """nn.MultiheadAttention's: xavier-uniform weight, zero bias."""
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)


class InProjSelfAttention(nn.Module):
    """Self-attention laid out like nn.MultiheadAttention (fused in_proj, out_proj).

    The fused layout is what OpenCLIP checkpoints store; splitting it ourselves lets the
    attention run through the model's attention callable instead of nn.MultiheadAttention's. The
    fused projection is an operations Linear (`in_proj`) whose weight and bias keep their official
    keys, `in_proj_weight` and `in_proj_bias`.
    """

    in_proj_weight = alias("in_proj.weight")
    in_proj_bias = alias("in_proj.bias")

    def __init__(self, width: int, heads: int, causal: bool = False, factory: Factory | None = None):
        super().__init__()
        f = factory or Factory()
        self.heads = heads
        self.causal = causal
        if not causal:
            self.attention_fn = f.attention
        self.in_proj = f.linear(width, 3 * width, logged=False)  # initialised below, as OpenCLIP does
        self.out_proj = f.linear(width, width)
        f.init(_init_in_proj, self.in_proj)
        rename_state_keys(self, {"in_proj.weight": "in_proj_weight", "in_proj.bias": "in_proj_bias"})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.in_proj(x).chunk(3, dim=-1)  # (b, n, c) each
        out = causal_attention(q, k, v, self.heads) if self.causal else self.attention_fn(q, k, v, self.heads)
        return self.out_proj(out)


class ResidualAttentionBlock(nn.Module):
    """OpenCLIP's pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)), exact GELU."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, causal: bool = False,
                 factory: Factory | None = None):
        super().__init__()
        f = factory or Factory()
        hidden = int(width * mlp_ratio)
        self.ln_1 = f.layer_norm(width, eps=1e-5)
        self.attn = InProjSelfAttention(width, heads, causal=causal, factory=f)
        self.ln_2 = f.layer_norm(width, eps=1e-5)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=f.linear(width, hidden),
                gelu=nn.GELU(),
                c_proj=f.linear(hidden, width),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, n, c) -> (b, n, c)
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of `ResidualAttentionBlock`s under OpenCLIP's key names (transformer.resblocks.i)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, causal: bool = False,
                 factory: Factory | None = None):
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, causal=causal, factory=factory) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, num_blocks: int | None = None) -> torch.Tensor:
        """Run the first `num_blocks` blocks (all when None); (b, n, c) -> (b, n, c)."""
        for block in self.resblocks[:num_blocks]:
            x = block(x)
        return x


# ------------------------------------------------------------------------------------------------
# OpenCLIP ViT-H/14 text tower
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenCLIPTextConfig:
    """Hyper-parameters of the OpenCLIP text tower; the defaults are ViT-H/14's."""

    width: int = 1024
    heads: int = 16
    layers: int = 24
    vocab_size: int = 49408
    context_length: int = 77
    mlp_ratio: float = 4.0
    embed_dim: int = 1024  # text_projection's output width (projection unused here)
    skip_last_layers: int = 1  # VideoCrafter's layer="penultimate": the last block is not run
    pad_token: int = 0  # open_clip.tokenize pads with 0
    kind: str = "openclip"  # tells the two text configs apart once serialised to JSON


class OpenCLIPTextEncoder(CoreModel):
    """FrozenOpenCLIPEmbedder: tokens (b, 77) -> ln_final(hidden after blocks[:-skip]) (b, 77, width).

    `text_projection` and `logit_scale` are never used but are kept so a checkpoint's
    `cond_stage_model.model.*` keys load with strict=True. They and `positional_embedding` are raw
    parameters of a leaf (`raw`), saved and loaded under those official keys. operations, dtype,
    device, attention: as the UNets (models/ops.py); it computes in `compute_dtype(self)`.
    """

    RAW = ("positional_embedding", "text_projection", "logit_scale")
    positional_embedding = alias("raw.positional_embedding")
    text_projection = alias("raw.text_projection")
    logit_scale = alias("raw.logit_scale")

    def __init__(self, config: OpenCLIPTextConfig = OpenCLIPTextConfig(), dtype: torch.dtype | None = None,
                 device=None, operations=None, attention: AttentionFn | None = None):
        super().__init__()
        self.config = c = config
        f = self._factory(operations, dtype, device, attention)
        # first, so that their keys come first, as in the official state dict
        self.raw = f.parameters(positional_embedding=(c.context_length, c.width),
                                text_projection=(c.width, c.embed_dim), logit_scale=())
        rename_state_keys(self, {f"raw.{name}": name for name in self.RAW})
        self.token_embedding = f.embedding(c.vocab_size, c.width)
        f.init(randn_, self.raw, "positional_embedding", 0.01)
        self.transformer = Transformer(c.width, c.layers, c.heads, c.mlp_ratio, causal=True, factory=f)
        self.ln_final = f.layer_norm(c.width, eps=1e-5)
        f.init(randn_, self.raw, "text_projection", c.width**-0.5)
        f.init(constant_, self.raw, "logit_scale", math.log(1 / 0.07))
        f.init(normal_, self.token_embedding, "weight", 0.02)
        self._finish(operations)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (b, n) long -> (b, n, width)."""
        x = self.token_embedding(tokens).to(compute_dtype(self))  # (b, n, c)
        x = x + self.raw.cast("positional_embedding", x)[: tokens.shape[1]]
        x = self.transformer(x, num_blocks=self.config.layers - self.config.skip_last_layers)
        return self.ln_final(x)

    @torch.no_grad()
    def encode(self, texts: list[str], tokenizer: "CLIPTokenizer") -> torch.Tensor:
        """Tokenize the OpenCLIP way (pad 0) on this module's device and encode: (b, 77, width)."""
        tokens = tokenizer(texts, context_length=self.config.context_length, pad_token=self.config.pad_token)
        return self(tokens.to(module_device(self)))


# ------------------------------------------------------------------------------------------------
# OpenAI CLIP ViT-L/14 text tower (HF CLIPTextModel layout)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CLIPTextConfig:
    """Hyper-parameters of HF CLIPTextModel; the defaults are openai/clip-vit-large-patch14's."""

    width: int = 768
    heads: int = 12
    layers: int = 12
    vocab_size: int = 49408
    context_length: int = 77
    intermediate: int = 3072
    pad_token: int = 49407  # HF CLIPTokenizer pads with <|endoftext|>
    kind: str = "clip"  # tells the two text configs apart once serialised to JSON


class CLIPEmbeddings(nn.Module):
    """Token plus learned absolute position embeddings (HF `embeddings.*`)."""

    def __init__(self, c: CLIPTextConfig, factory: Factory | None = None):
        super().__init__()
        f = factory or Factory()
        self.token_embedding = f.embedding(c.vocab_size, c.width)
        self.position_embedding = f.embedding(c.context_length, c.width)
        f.init(normal_, self.token_embedding, "weight", 0.02)
        f.init(normal_, self.position_embedding, "weight", 0.01)

    def forward(self, tokens: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:  # (b, n) -> (b, n, c)
        """Both embeddings in `dtype` (default: the token embedding's output dtype)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens)
        x = x.to(dtype or x.dtype)
        return x + self.position_embedding(positions).to(x.dtype)


class CLIPSelfAttention(nn.Module):
    """Causal self-attention with separate q/k/v projections (HF `self_attn.*`)."""

    def __init__(self, width: int, heads: int, factory: Factory | None = None):
        super().__init__()
        f = factory or Factory()
        self.heads = heads
        self.q_proj = f.linear(width, width)
        self.k_proj = f.linear(width, width)
        self.v_proj = f.linear(width, width)
        self.out_proj = f.linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, n, c) -> (b, n, c)
        out = causal_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    """fc1 -> quick_gelu -> fc2 (HF `mlp.*`)."""

    def __init__(self, width: int, intermediate: int, factory: Factory | None = None):
        super().__init__()
        f = factory or Factory()
        self.fc1 = f.linear(width, intermediate)
        self.fc2 = f.linear(intermediate, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """HF CLIP's pre-LN block: x + self_attn(layer_norm1(x)), then x + mlp(layer_norm2(x))."""

    def __init__(self, c: CLIPTextConfig, factory: Factory | None = None):
        super().__init__()
        f = factory or Factory()
        self.layer_norm1 = f.layer_norm(c.width, eps=1e-5)
        self.self_attn = CLIPSelfAttention(c.width, c.heads, f)
        self.layer_norm2 = f.layer_norm(c.width, eps=1e-5)
        self.mlp = CLIPMLP(c.width, c.intermediate, f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    """The block stack under HF's key names (encoder.layers.i)."""

    def __init__(self, c: CLIPTextConfig, factory: Factory | None = None):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(c, factory) for _ in range(c.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPTextEncoder(CoreModel):
    """FrozenCLIPEmbedder: tokens (b, 77) -> last_hidden_state (b, 77, width).

    The official file also holds an int64 `embeddings.position_ids` buffer; it is not registered
    here (positions are always 0..n-1) and the checkpoint loader drops it. operations, dtype,
    device, attention: as the UNets (models/ops.py); it computes in `compute_dtype(self)`.
    """

    def __init__(self, config: CLIPTextConfig = CLIPTextConfig(), dtype: torch.dtype | None = None, device=None,
                 operations=None, attention: AttentionFn | None = None):
        super().__init__()
        self.config = config
        f = self._factory(operations, dtype, device, attention)
        self.embeddings = CLIPEmbeddings(config, f)
        self.encoder = CLIPEncoder(config, f)
        self.final_layer_norm = f.layer_norm(config.width, eps=1e-5)
        self._finish(operations)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (b, n) long -> (b, n, width)."""
        return self.final_layer_norm(self.encoder(self.embeddings(tokens, compute_dtype(self))))

    @torch.no_grad()
    def encode(self, texts: list[str], tokenizer: "CLIPTokenizer") -> torch.Tensor:
        """Tokenize the HF way (pad with EOT) on this module's device and encode: (b, 77, width)."""
        tokens = tokenizer(texts, context_length=self.config.context_length, pad_token=self.config.pad_token)
        return self(tokens.to(module_device(self)))
