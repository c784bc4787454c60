"""Video latents for KSampler and back: Empty Video Latent and VideoCrafter Decode.

VideoCrafter and LVDM latents are (b, 4, t, h, w), unscaled SD-VAE latents with a time axis
(ComfyUI's LATENT convention; the model's latent format scales them). ComfyUI's own VAE Decode
does not fold the time axis of an SD VAE (0.3.75 raises, 0.33 keeps frame 0), so decoding is here.
"""

from __future__ import annotations

from fractions import Fraction

import comfy.model_management as mm
import torch
from comfy_api.latest import InputImpl, Types, io
from einops import rearrange

from . import runtime
from .common import schema, vae_input, video_size_inputs


def as_video(frames: torch.Tensor, fps: float):
    """IMAGE frames (t, h, w, 3) -> a native VIDEO that plays at `fps`."""
    return InputImpl.VideoFromComponents(Types.VideoComponents(images=frames, audio=None,
                                                               frame_rate=Fraction(fps).limit_denominator(1001)))


def decode_video(vae, samples: torch.Tensor) -> torch.Tensor:
    """Unscaled latents (b, 4, t, h, w) -> frames ((b t), H, W, 3) in 0..1, video after video."""
    if samples.dim() != 5:
        raise ValueError(f"expected video latents (b, 4, t, h, w), got shape {tuple(samples.shape)}: "
                         "sample a VideoCrafter model from Empty Video Latent")
    runtime.check_interrupted()
    with torch.no_grad():
        return vae.decode(rearrange(samples, "b c t h w -> (b t) c h w"))


class EmptyVideoLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_EmptyVideoLatent", "Empty Video Latent (VideoCrafter)", "EchoReel/latent",
            "Zeros of shape (batch, 4, frames, height / f, width / f), f the VAE's downscale (8), for KSampler "
            "with a VideoCrafter or LVDM model.",
            inputs=[
                vae_input("The checkpoint's VAE: sets the latent's downscale."),
                *video_size_inputs(),
                io.Int.Input("frames", default=16, min=1, max=256, tooltip="Frames (the models were trained on 16)."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Videos sampled at once."),
            ],
            outputs=[io.Latent.Output(tooltip="Empty video latents (b, 4, t, h, w).")],
            aliases=["empty latent video", "video latent"],
        )

    @classmethod
    def execute(cls, vae, width, height, frames, batch_size) -> io.NodeOutput:
        f = vae.downscale_ratio
        if width % f or height % f:
            raise ValueError(f"width and height must be multiples of the VAE's downscale {f}, got {width}x{height}")
        samples = torch.zeros(batch_size, 4, frames, height // f, width // f, device=mm.intermediate_device())
        return io.NodeOutput({"samples": samples})


class DecodeVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_DecodeVideo", "VideoCrafter Decode", "EchoReel/latent",
            "Decodes video latents (b, 4, t, h, w) frame by frame with the checkpoint's VAE into frames and a VIDEO.",
            inputs=[
                vae_input("The checkpoint's VAE."),
                io.Latent.Input("samples", tooltip="Video latents from KSampler or a VideoCrafter sampler."),
                io.Float.Input("fps", default=8.0, min=1.0, max=120.0, step=1.0, tooltip="The output video's frame rate."),
            ],
            outputs=[
                io.Image.Output("images", display_name="frames", tooltip="Every video's frames, (b t, h, w, 3) in 0..1."),
                io.Video.Output("video", display_name="video", tooltip="The first video as a native VIDEO, for Save Video."),
            ],
            aliases=["vae decode video", "decode video"],
        )

    @classmethod
    def execute(cls, vae, samples, fps) -> io.NodeOutput:
        latents = samples["samples"]
        frames = decode_video(vae, latents)
        return io.NodeOutput(frames, as_video(frames[: latents.shape[2]], fps))
