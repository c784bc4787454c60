"""Caption embeddings from a video model's own text encoder: one pooled, L2-normalised vector per text.

What is pooled, per family (the text towers of models/text_encoders.py):
    OpenCLIP ViT-H/14 (VideoCrafter1/2) and the toy model's OpenCLIP-style tower: OpenCLIP's own
        `encode_text`: every block of the tower (VideoCrafter conditions on the penultimate one,
        but the checkpoint holds the last block too and CLIP's text-image space is the last
        one's), `ln_final`, the end-of-text token (the first position of the largest token id),
        times `text_projection`: the 1024-d CLIP text embedding. The toy tower (2 blocks, none
        skipped) is treated the same way; its `text_projection` never trained (the toy UNet reads
        the 77 hidden states, never the projection), so it is the random matrix it was initialised
        with: a fixed linear map of the pooled token, which the index records like any weight.
    CLIP ViT-L/14 (LVDM, HF CLIPTextModel): the end-of-text token of `last_hidden_state` (after the
        final layer norm), i.e. HF's `pooler_output`, 768-d. Its `text_projection` lives in
        CLIPModel, not in the text model LVDM stores, so there is none to apply: the pooled token
        is the best the checkpoint offers (a linear map short of CLIP's joint space).
Both towers are causal, so the end-of-text token sees only the tokens before it: texts are
encoded cut right after their longest end-of-text token instead of padded to 77, which gives the
same vectors (up to float rounding) several times faster.

`fingerprint` names the encoder an index was built with: a hash of the family, the widths, this
pooling rule's version, and a strided sample (at most 4096 values per tensor, as float32, so the
dtype the weights were loaded in does not matter) of every weight. An index records it and is
refused by any other encoder.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

POOLING_VERSION = "eot-pooled-v1"
SAMPLE = 4096  # values hashed per tensor
BATCH = 256


@dataclass(frozen=True)
class EncoderInfo:
    """What an index records about the encoder that made it."""

    family: str  # "openclip" or "clip"
    width: int
    dim: int  # the embedding's size
    fingerprint: str

    def describe(self) -> str:
        return f"{self.family} text encoder, width {self.width}, {self.dim}-d embeddings, weights {self.fingerprint[:12]}"


def _kind(encoder: torch.nn.Module) -> str:
    kind = getattr(getattr(encoder, "config", None), "kind", None)
    if kind not in ("openclip", "clip"):
        raise ValueError(f"{type(encoder).__name__} is not a text encoder of this project (config.kind {kind!r})")
    return kind


def fingerprint(encoder: torch.nn.Module) -> str:
    """A hash of the encoder's kind, sizes, the pooling rule and a sample of every weight."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{POOLING_VERSION}|{_kind(encoder)}|{encoder.config}".encode())
    with torch.no_grad():
        for name, tensor in sorted(encoder.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // SAMPLE)
            sample = flat[::step][:SAMPLE].float().cpu().contiguous()
            h.update(f"{name}:{tuple(tensor.shape)}".encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def _whole_tower(encoder: torch.nn.Module):
    """Make an OpenCLIP tower that skips its last blocks (VideoCrafter's penultimate layer) run them:
    a forward hook on `transformer` (OpenCLIP's key name) runs the skipped blocks on its output,
    before the encoder applies ln_final. Nothing changes for a tower that runs every block."""
    skip = int(getattr(encoder.config, "skip_last_layers", 0) or 0)
    if skip <= 0:
        yield
        return
    blocks = list(encoder.transformer.resblocks)[-skip:]

    def finish(module, args, output):
        for block in blocks:
            output = block(output)
        return output

    handle = encoder.transformer.register_forward_hook(finish)
    try:
        yield
    finally:
        handle.remove()


class TextEmbedder:
    """Pooled, normalised text embeddings of one text encoder (see the module docstring)."""

    def __init__(self, encoder: torch.nn.Module, tokenizer):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.family = _kind(encoder)
        self._info: EncoderInfo | None = None

    @property
    def info(self) -> EncoderInfo:
        if self._info is None:
            c = self.encoder.config
            dim = c.embed_dim if self.family == "openclip" else c.width
            self._info = EncoderInfo(self.family, int(c.width), int(dim), fingerprint(self.encoder))
        return self._info

    def _device(self) -> torch.device:
        for p in self.encoder.parameters():
            return p.device
        return torch.device("cpu")

    @torch.no_grad()
    def _batch(self, texts: list[str]) -> torch.Tensor:
        c = self.encoder.config
        tokens = self.tokenizer(texts, context_length=c.context_length, pad_token=c.pad_token)
        eot = tokens.argmax(dim=-1)  # the end-of-text id is the largest; argmax gives its first place
        tokens = tokens[:, : int(eot.max()) + 1].to(self._device())
        with _whole_tower(self.encoder):
            hidden = self.encoder(tokens)  # (b, n, width)
        pooled = hidden[torch.arange(len(texts)), eot.to(hidden.device)]
        if self.family == "openclip":
            pooled = pooled @ self.encoder.text_projection.to(device=pooled.device, dtype=pooled.dtype)
        return F.normalize(pooled.float(), dim=-1).cpu()

    def embed(self, texts: list[str], batch_size: int = BATCH) -> torch.Tensor:
        """(len(texts), dim) float32, rows of norm 1; identical texts are encoded once."""
        unique = list(dict.fromkeys(texts))
        rows = {}
        for start in range(0, len(unique), batch_size):
            chunk = unique[start:start + batch_size]
            for text, vector in zip(chunk, self._batch(chunk)):
                rows[text] = vector
        if not texts:
            return torch.zeros(0, self.info.dim)
        return torch.stack([rows[t] for t in texts])
