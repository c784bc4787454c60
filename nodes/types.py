"""The objects of this pack that travel between its nodes besides ComfyUI's own types."""

from __future__ import annotations

from dataclasses import dataclass

from comfy.model_patcher import ModelPatcher

from ..echoreel_core.models.tokenizer import CLIPTokenizer


@dataclass(frozen=True)
class TextEncoderModel:
    """The checkpoint's own text tower (a core module) and the CLIP tokenizer, kept on the native
    CLIP as `echoreel_text_encoder` for reference retrieval, whose library index is built with the
    core's pooled embeddings (echoreel_core/library/embed.py)."""

    patcher: ModelPatcher
    tokenizer: CLIPTokenizer
