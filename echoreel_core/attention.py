"""The one attention entry point of the project.

Every attention layer (UNet, Action Prism, Action Integration, encoders) calls `attention` on
already-projected tensors laid out as (b, n, heads * d). The default backend is PyTorch SDPA;
xformers is used only for CUDA tensors when it is installed, because on CPU it raises. A host
application (the ComfyUI node layer) may install its own backend with `use_attention_backend`,
which takes ComfyUI's `optimized_attention(q, k, v, heads)` signature as it is.

Relative-position attention (VideoCrafter1 temporal layers, LVDM, the Prism) needs the softmax
weights themselves for its value term, which no fused kernel returns: `relative_attention` is the
explicit path for it.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]

try:  # optional, CUDA only
    import xformers.ops as _xops
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _xops = None


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax attention with the default scale d**-0.5; (b, n, h*d) in and out."""
    b, n_q, inner = q.shape
    d = inner // heads
    if _xops is not None and q.is_cuda:
        # xformers wants (b, n, heads, d)
        out = _xops.memory_efficient_attention(
            q.view(b, n_q, heads, d), k.view(b, -1, heads, d), v.view(b, -1, heads, d)
        )
        return out.reshape(b, n_q, inner)
    q, k, v = (x.view(b, -1, heads, d).transpose(1, 2) for x in (q, k, v))  # (b, h, n, d)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, n_q, inner)


_backend: AttentionFn = sdpa_attention


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head softmax attention through the active backend; (b, n, h*d) in and out."""
    return _backend(q, k, v, heads)


@contextlib.contextmanager
def use_attention_backend(fn: AttentionFn | None) -> Iterator[None]:
    """Route `attention` through `fn` inside the block (None keeps the current backend)."""
    global _backend
    previous = _backend
    if fn is not None:
        _backend = fn
    try:
        yield
    finally:
        _backend = previous


def relative_position_index(len_q: int, len_k: int, max_distance: int, device=None) -> torch.Tensor:
    """Index into a (2*max_distance+1, d) table: clamp(j - i, -max, max) + max, shape (len_q, len_k)."""
    distance = torch.arange(len_k, device=device)[None, :] - torch.arange(len_q, device=device)[:, None]
    return distance.clamp(-max_distance, max_distance) + max_distance


def relative_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    table_k: torch.Tensor,
    table_v: torch.Tensor,
) -> torch.Tensor:
    """Attention with Shaw-style relative positions, as VideoCrafter1, LVDM and EchoReel use it.

    logits[i, j] = (q_i . k_j + q_i . Ek[j - i]) * d**-0.5
    out_i        = sum_j softmax_ij * (v_j + Ev[j - i])

    The tables (2*max+1, d) are shared by all heads; distances beyond max are clamped.
    q: (b, n_q, h*d); k, v: (b, n_k, h*d) -> (b, n_q, h*d).
    """
    b, n_q, inner = q.shape
    n_k = k.shape[1]
    d = inner // heads
    scale = d**-0.5
    max_distance = (table_k.shape[0] - 1) // 2
    index = relative_position_index(n_q, n_k, max_distance, device=q.device)
    rel_k = table_k[index].to(q.dtype)  # (n_q, n_k, d)
    rel_v = table_v[index].to(q.dtype)
    q, k, v = (x.view(b, -1, heads, d).transpose(1, 2) for x in (q, k, v))  # (b, h, n, d)
    logits = (q @ k.transpose(-1, -2) + torch.einsum("bhid,ijd->bhij", q, rel_k)) * scale
    weights = logits.softmax(dim=-1)
    out = weights @ v + torch.einsum("bhij,ijd->bhid", weights, rel_v)
    return out.transpose(1, 2).reshape(b, n_q, inner)
