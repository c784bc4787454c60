"""What a VideoCrafter/LVDM model needs beyond CLIPTextEncode's prompts: the fps conditioning,
image-to-video image tokens, and the wave-1 text-encode node kept for saved workflows.

fps and image tokens travel as conditioning entries (`fps`, `image_context`) that the model's
`extra_conds` hands to the UNet; both nodes set positive and negative together, so the two
branches keep the same keys and ComfyUI batches them in one UNet call.
"""

from __future__ import annotations

import node_helpers
import torch
from comfy_api.latest import io

from ..echoreel_core.pipelines.generate import prepare_image
from . import runtime
from .common import prompt_inputs, schema, video_size_inputs
from .model import video_base_model


def encode_prompt(clip, text: str):
    """CONDITIONING of `text`, as CLIPTextEncode makes it."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def with_values(conditioning, values: dict):
    return node_helpers.conditioning_set_values(conditioning, values)


class VideoCrafterTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_TextEncode", "VideoCrafter Text Encode (use CLIP Text Encode)", "EchoReel/conditioning",
            "Kept so that workflows saved before the native CLIP still load: it is CLIP Text Encode. New workflows "
            "use ComfyUI's CLIP Text Encode with the CLIP of Load VideoCrafter Checkpoint.",
            inputs=[
                io.Clip.Input("text_encoder", tooltip="The CLIP from Load VideoCrafter Checkpoint."),
                io.String.Input("text", multiline=True, dynamic_prompts=True,
                                tooltip="The prompt; leave empty for the official unconditional prompt."),
            ],
            outputs=[io.Conditioning.Output(tooltip="The text context (1, 77, width) as ComfyUI conditioning.")],
            aliases=["prompt", "text encode"],
            deprecated=True,
        )

    @classmethod
    def execute(cls, text_encoder, text: str) -> io.NodeOutput:
        return io.NodeOutput(encode_prompt(text_encoder, text))


def conditioning_pair_outputs() -> list[io.Output]:
    return [
        io.Conditioning.Output("positive_out", display_name="positive", tooltip="The positive prompt with the values set."),
        io.Conditioning.Output("negative_out", display_name="negative", tooltip="The negative prompt with the values set."),
    ]


class VideoFps(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_VideoFps", "VideoCrafter fps", "EchoReel/conditioning",
            "Sets the fps conditioning of VideoCrafter2, I2V and VideoCrafter1-1024 models (how fast the motion "
            "is; ignored by the others). Without it the model's trained default is used (28, I2V 8).",
            inputs=prompt_inputs() + [
                io.Int.Input("fps", default=28, min=1, max=120, tooltip="Frames per second the model is told to make."),
            ],
            outputs=conditioning_pair_outputs(),
            aliases=["frame rate", "fps conditioning"],
        )

    @classmethod
    def execute(cls, positive, negative, fps: int) -> io.NodeOutput:
        return io.NodeOutput(with_values(positive, {"fps": fps}), with_values(negative, {"fps": fps}))


class ImageConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_ImageConditioning", "VideoCrafter Image Conditioning", "EchoReel/conditioning",
            "Image-to-video: encodes the first-frame image with the checkpoint's own CLIP image encoder and "
            "Resampler (as official: the image resized to the video size) into the positive prompt, and the official "
            "mid-grey image into the negative one.",
            inputs=[
                io.Model.Input("model", tooltip="An image-to-video model from Load VideoCrafter Checkpoint."),
                *prompt_inputs(),
                io.Image.Input("image", tooltip="The first frame of the video to generate."),
                *video_size_inputs(),
            ],
            outputs=conditioning_pair_outputs(),
            aliases=["image to video", "i2v", "first frame"],
        )

    @classmethod
    def execute(cls, model, positive, negative, image, width: int, height: int) -> io.NodeOutput:
        base = video_base_model(model, "model")
        if base.image_encoder is None:
            raise ValueError(f"{base.preset.name} is a text-to-video model: it takes no image")
        cond, uncond = image_tokens(base.image_encoder, image[:1], height, width), image_tokens(base.image_encoder, None)
        return io.NodeOutput(with_values(positive, {"image_context": cond}), with_values(negative, {"image_context": uncond}))


def image_tokens(encoder_patcher, image: torch.Tensor | None, height: int = 0, width: int = 0) -> torch.Tensor:
    """(1, n_tokens, D) Resampler tokens of an IMAGE (1, H, W, 3), or of the official mid-grey image."""
    runtime.load_to_device(encoder_patcher)
    modules = encoder_patcher.model
    encoder, resampler = modules["image_encoder"], modules["resampler"]
    weight = next(encoder.parameters())
    if image is None:
        size = encoder.config.image_size
        pixels = torch.zeros(1, 3, size, size)
    else:
        pixels = prepare_image(image[0], height, width)
    with torch.no_grad():
        return resampler(encoder(encoder.preprocess(pixels.to(weight.device)).to(weight.dtype))).float().cpu()
