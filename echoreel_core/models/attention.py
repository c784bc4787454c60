"""The one attention entry point of the project.

Every softmax attention layer (UNet, Action Prism, autoencoder, encoders) calls an attention
callable `(q, k, v, heads) -> out` on already-projected tensors laid out as (b, n, heads * d). Each
model holds its own (its constructor's `attention=`, or `set_attention` later; models/ops.py); the
default is `sdpa_attention`: PyTorch SDPA, with xformers only for CUDA tensors when it is installed
(on CPU it raises). A host application (the ComfyUI node layer) passes ComfyUI's
`optimized_attention`, whose `(q, k, v, heads)` signature is the same, to the models it builds.

Relative-position attention (VideoCrafter1 temporal layers, LVDM, the Prism) needs the softmax
weights themselves for its value term, which no fused kernel returns: `relative_attention` is the
explicit path for it.
"""

from __future__ import annotations

from typing import Callable

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


def relative_position_index(query_positions: torch.Tensor, key_positions: torch.Tensor, max_distance: int) -> torch.Tensor:
    """Index into a (2*max_distance+1, d) table: clamp(j - i, -max, max) + max, shape (len_q, len_k)."""
    distance = key_positions[None, :] - query_positions[:, None]
    return distance.clamp(-max_distance, max_distance) + max_distance


def relative_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    table_k: torch.Tensor,
    table_v: torch.Tensor,
    key_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention with Shaw-style relative positions, as VideoCrafter1, LVDM and EchoReel use it.

    logits[i, j] = (q_i . k_j + q_i . Ek[p_j - i]) * d**-0.5
    out_i        = sum_j softmax_ij * (v_j + Ev[p_j - i])

    The tables (2*max+1, d) are shared by all heads; distances beyond max are clamped. Key
    positions p_j default to 0..n_k-1. Tables stored elsewhere (another device, fp8) are cast to
    q's device and dtype.

    q: (B, n_q, h*d); k, v: (B', n_k, h*d) with B a multiple of B': query row r uses the keys of
    sample r // (B / B'). Shared keys are broadcast by the matmul instead of being copied, which
    is how EchoReel's reference tokens reach every spatial position of their own sample; they
    take the position vectors into per-query-frame keys and values first.
    Returns (B, n_q, h*d).
    """
    batch, n_q, inner = q.shape
    samples, n_k, _ = k.shape
    rows = batch // samples
    d = inner // heads
    max_distance = (table_k.shape[0] - 1) // 2
    if key_positions is None:
        key_positions = torch.arange(n_k, device=q.device)
    index = relative_position_index(torch.arange(n_q, device=q.device), key_positions.to(q.device), max_distance)
    rel_k = table_k.to(q.device, q.dtype)[index]  # (n_q, n_k, d)
    rel_v = table_v.to(q.device, q.dtype)[index]
    if rows > 1:
        # keys shared by many query rows (EchoReel's reference frames at every spatial position):
        # fold the position vectors into per-query-frame keys and values, a few thousand numbers,
        # and attend with two batched matmuls per query frame (5x faster on CPU than the einsums)
        keys, values = (x.view(samples, n_k, heads, d).transpose(1, 2)[:, :, None] + rel  # (s, h, n_q, n_k, d)
                        for x, rel in ((k, rel_k), (v, rel_v)))
        q = q.view(samples, rows, n_q, heads, d).permute(0, 3, 2, 1, 4)  # (s, h, n_q, rows, d)
        weights = (q @ (keys.transpose(-1, -2) * d**-0.5)).softmax(dim=-1)  # (s, h, n_q, rows, n_k)
        return (weights @ values).permute(0, 3, 2, 1, 4).reshape(batch, n_q, inner)
    q = q.view(samples, rows, n_q, heads, d).permute(0, 3, 1, 2, 4)  # (s, h, rows, n_q, d)
    k, v = (x.view(samples, n_k, heads, d).transpose(1, 2)[:, :, None] for x in (k, v))  # (s, h, 1, n_k, d)
    logits = (q @ k.transpose(-1, -2) + torch.einsum("shrid,ijd->shrij", q, rel_k)) * d**-0.5
    weights = logits.softmax(dim=-1)
    out = weights @ v + torch.einsum("shrij,ijd->shrid", weights, rel_v)  # (s, h, rows, n_q, d)
    return out.permute(0, 2, 3, 1, 4).reshape(batch, n_q, inner)
