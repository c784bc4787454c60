"""The two frozen text towers the video models condition on, as plain PyTorch modules.

- `OpenCLIPTextEncoder`: VideoCrafter's FrozenOpenCLIPEmbedder (OpenCLIP ViT-H/14 text tower,
  layer="penultimate"): the hidden states after all but the last block, then ln_final.
- `CLIPTextEncoder`: LVDM's FrozenCLIPEmbedder (HF CLIPTextModel of openai/clip-vit-large-patch14,
  layer="last"): last_hidden_state.

Parameter names equal the official state dicts once their checkpoint prefix is stripped, so the
weights load with strict=True. Both towers return all 77 positions: the UNet cross-attends to the
whole sequence, padding included, exactly as the models were trained.

The OpenCLIP residual block (`ResidualAttentionBlock`) and stack (`Transformer`) are shared with
the vision tower in image_encoders.py.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import attention

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


class InProjSelfAttention(nn.Module):
    """Self-attention laid out like nn.MultiheadAttention (fused in_proj, out_proj).

    The fused layout is what OpenCLIP checkpoints store; splitting it ourselves lets the
    attention run through the project's backend instead of nn.MultiheadAttention's.
    """

    def __init__(self, width: int, heads: int, causal: bool = False):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)  # (b, n, c) each
        out = causal_attention(q, k, v, self.heads) if self.causal else attention(q, k, v, self.heads)
        return self.out_proj(out)


class ResidualAttentionBlock(nn.Module):
    """OpenCLIP's pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)), exact GELU."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, causal: bool = False):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width, eps=1e-5)
        self.attn = InProjSelfAttention(width, heads, causal=causal)
        self.ln_2 = nn.LayerNorm(width, eps=1e-5)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, hidden),
                gelu=nn.GELU(),
                c_proj=nn.Linear(hidden, width),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, n, c) -> (b, n, c)
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of `ResidualAttentionBlock`s under OpenCLIP's key names (transformer.resblocks.i)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, causal: bool = False):
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, causal=causal) for _ in range(layers)
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


class OpenCLIPTextEncoder(nn.Module):
    """FrozenOpenCLIPEmbedder: tokens (b, 77) -> ln_final(hidden after blocks[:-skip]) (b, 77, width).

    `text_projection` and `logit_scale` are never used but are kept so a checkpoint's
    `cond_stage_model.model.*` keys load with strict=True.
    """

    def __init__(self, config: OpenCLIPTextConfig = OpenCLIPTextConfig()):
        super().__init__()
        self.config = c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.positional_embedding = nn.Parameter(torch.randn(c.context_length, c.width) * 0.01)
        self.transformer = Transformer(c.width, c.layers, c.heads, c.mlp_ratio, causal=True)
        self.ln_final = nn.LayerNorm(c.width, eps=1e-5)
        self.text_projection = nn.Parameter(torch.randn(c.width, c.embed_dim) * c.width**-0.5)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (b, n) long -> (b, n, width)."""
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]  # (b, n, c)
        x = self.transformer(x, num_blocks=self.config.layers - self.config.skip_last_layers)
        return self.ln_final(x)

    @torch.no_grad()
    def encode(self, texts: list[str], tokenizer: "CLIPTokenizer") -> torch.Tensor:
        """Tokenize the OpenCLIP way (pad 0) on this module's device and encode: (b, 77, width)."""
        tokens = tokenizer(texts, context_length=self.config.context_length, pad_token=self.config.pad_token)
        return self(tokens.to(self.token_embedding.weight.device))


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

    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.position_embedding = nn.Embedding(c.context_length, c.width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.01)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (b, n) -> (b, n, c)
        return self.token_embedding(tokens) + self.position_embedding.weight[: tokens.shape[1]]


class CLIPSelfAttention(nn.Module):
    """Causal self-attention with separate q/k/v projections (HF `self_attn.*`)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, n, c) -> (b, n, c)
        out = causal_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    """fc1 -> quick_gelu -> fc2 (HF `mlp.*`)."""

    def __init__(self, width: int, intermediate: int):
        super().__init__()
        self.fc1 = nn.Linear(width, intermediate)
        self.fc2 = nn.Linear(intermediate, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """HF CLIP's pre-LN block: x + self_attn(layer_norm1(x)), then x + mlp(layer_norm2(x))."""

    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(c.width, eps=1e-5)
        self.self_attn = CLIPSelfAttention(c.width, c.heads)
        self.layer_norm2 = nn.LayerNorm(c.width, eps=1e-5)
        self.mlp = CLIPMLP(c.width, c.intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    """The block stack under HF's key names (encoder.layers.i)."""

    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(c) for _ in range(c.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPTextEncoder(nn.Module):
    """FrozenCLIPEmbedder: tokens (b, 77) -> last_hidden_state (b, 77, width).

    The official file also holds an int64 `embeddings.position_ids` buffer; it is not registered
    here (positions are always 0..n-1) and the checkpoint loader drops it.
    """

    def __init__(self, config: CLIPTextConfig = CLIPTextConfig()):
        super().__init__()
        self.config = config
        self.embeddings = CLIPEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.width, eps=1e-5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (b, n) long -> (b, n, width)."""
        return self.final_layer_norm(self.encoder(self.embeddings(tokens)))

    @torch.no_grad()
    def encode(self, texts: list[str], tokenizer: "CLIPTokenizer") -> torch.Tensor:
        """Tokenize the HF way (pad with EOT) on this module's device and encode: (b, 77, width)."""
        tokens = tokenizer(texts, context_length=self.config.context_length, pad_token=self.config.pad_token)
        return self(tokens.to(self.embeddings.token_embedding.weight.device))
