"""VideoCrafter Text Encode: prompts through the checkpoint's own text encoder."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from . import runtime
from .common import TextEncoderType, schema


class VideoCrafterTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_TextEncode", "VideoCrafter Text Encode", "EchoReel/conditioning",
            "Encodes a prompt (positive, negative or a reference video's caption) with the checkpoint's own text "
            "encoder (OpenCLIP ViT-H penultimate for VideoCrafter, CLIP ViT-L for LVDM), 77 tokens, as official.",
            inputs=[
                TextEncoderType.Input("text_encoder", tooltip="From Load VideoCrafter Checkpoint."),
                io.String.Input("text", multiline=True, dynamic_prompts=True,
                                tooltip="The prompt; leave empty for the official unconditional prompt."),
            ],
            outputs=[io.Conditioning.Output(tooltip="The text context (1, 77, width) as ComfyUI conditioning.")],
            aliases=["prompt", "text encode"],
        )

    @classmethod
    def execute(cls, text_encoder, text: str) -> io.NodeOutput:
        runtime.load_to_device(text_encoder.patcher)
        with torch.no_grad():
            context = text_encoder.patcher.model.encode([text], text_encoder.tokenizer)
        return io.NodeOutput([[context.float().cpu(), {}]])
