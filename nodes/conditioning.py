"""VideoCrafter Text Encode: prompts through the checkpoint's own text encoder."""

from __future__ import annotations

import torch

from . import runtime
from .types import TEXT_ENCODER


class VideoCrafterTextEncode:
    DESCRIPTION = (
        "Encodes a prompt (positive, negative or a reference video's caption) with the checkpoint's own "
        "text encoder (OpenCLIP ViT-H penultimate for VideoCrafter, CLIP ViT-L for LVDM), 77 tokens, as official."
    )
    CATEGORY = "EchoReel/conditioning"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("The text context (1, 77, width) as ComfyUI conditioning.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text_encoder": (TEXT_ENCODER, {"tooltip": "From Load VideoCrafter Checkpoint."}),
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The prompt; leave empty for the official unconditional prompt."}),
            }
        }

    def encode(self, text_encoder, text):
        runtime.load_to_device(text_encoder.patcher)
        with torch.no_grad():
            context = text_encoder.patcher.model.encode([text], text_encoder.tokenizer)
        return ([[context.float().cpu(), {}]],)
