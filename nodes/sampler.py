"""VideoCrafter Sampler: the official DDIM for text-to-video and image-to-video, EchoReel included."""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import torch
from comfy_api.latest import InputImpl, Types, io
from einops import rearrange

from ..echoreel_core.long_pipeline import generate_long_latents
from ..echoreel_core.pipeline import EchoReelGuidance, SamplingSettings, check_request, generate_latents, prepare_image
from . import runtime
from .common import model_input, schema, seed_input, vae_input
from .echoreel_nodes import text_context


def image_tokens(model, image: torch.Tensor | None, height: int, width: int) -> torch.Tensor:
    """I2V: (1, 16, 1024) tokens of the image (1, H, W, 3), or of the official mid-grey image."""
    modules = model.image.model
    encoder, resampler = modules["image_encoder"], modules["resampler"]
    weight = next(encoder.parameters())
    if image is None:
        size = encoder.config.image_size
        pixels = torch.zeros(1, 3, size, size)
    else:
        pixels = prepare_image(image[0], height, width)
    with torch.no_grad():
        return resampler(encoder(encoder.preprocess(pixels.to(weight.device)).to(weight.dtype)))


def sampler_inputs(frames_min: int, frames_tooltip: str) -> list[io.Input]:
    """The inputs both samplers take, in the order saved in workflows."""
    return [
        model_input(),
        io.Conditioning.Input("positive", tooltip="The prompt, from VideoCrafter Text Encode."),
        io.Conditioning.Input("negative", tooltip="The negative prompt (empty text = the official unconditional prompt)."),
        vae_input("The checkpoint's VAE, to decode the frames."),
        io.Int.Input("width", default=512, min=16, max=4096, step=16,
                     tooltip="Video width in pixels (512 for VideoCrafter 512 models, 256 for LVDM)."),
        io.Int.Input("height", default=320, min=16, max=4096, step=16,
                     tooltip="Video height in pixels (320 for VideoCrafter 512 models, 256 for LVDM)."),
        io.Int.Input("frames", default=16, min=frames_min, max=256, tooltip=frames_tooltip),
        io.Int.Input("fps", default=28, min=1, max=120,
                     tooltip="The fps conditioning of VideoCrafter2, I2V and 1024 models (ignored by the others), "
                             "and the frame rate of the output video."),
        io.Int.Input("steps", default=50, min=1, max=1000, tooltip="DDIM steps (50 as official)."),
        io.Float.Input("cfg", default=12.0, min=1.0, max=100.0, step=0.5,
                       tooltip="Classifier-free guidance scale (12 as official; 1 runs only the prompt branch)."),
        io.Float.Input("eta", default=1.0, min=0.0, max=1.0, step=0.05,
                       tooltip="DDIM eta (1.0 as official; 0 is deterministic DDIM)."),
        seed_input(123, "The noise seed (drawn on the CPU: the same video on every device).", control=True),
    ]


IMAGE_INPUT_TOOLTIP = "The first-frame image for image-to-video models."


def sampler_outputs(what: str) -> list[io.Output]:
    return [
        io.Image.Output("images", display_name="frames", tooltip=f"{what}, (t, h, w, 3) in 0..1."),
        io.Latent.Output("latent", display_name="latent",
                         tooltip="Unscaled SD-VAE latents with frames as batch (native VAE Decode decodes them)."),
        io.Video.Output("video", display_name="video",
                        tooltip="The frames as a native VIDEO at the sampler's fps, for Save Video."),
    ]


def as_video(frames: torch.Tensor, fps: int):
    """IMAGE frames (t, h, w, 3) -> a native VIDEO that plays at `fps`."""
    return InputImpl.VideoFromComponents(Types.VideoComponents(images=frames, audio=None, frame_rate=Fraction(fps)))


class VideoCrafterSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_VideoCrafterSampler", "VideoCrafter Sampler", "EchoReel/sampling",
            "Samples a video with DDIM exactly as the official VideoCrafter/LVDM sampler (eta 1, cfg 12 by default). "
            "Connect an image for image-to-video models. EchoReel applied to the model is attached only while it runs.",
            inputs=sampler_inputs(1, "Frames to generate (the models were trained on 16).")
            + [io.Image.Input("image", optional=True, tooltip=IMAGE_INPUT_TOOLTIP)],
            outputs=sampler_outputs("The decoded frames"),
            aliases=["ddim", "text to video", "image to video"],
        )

    @classmethod
    def execute(cls, model, positive, negative, vae, width, height, frames, fps, steps, cfg, eta, seed,
                image=None) -> io.NodeOutput:
        settings = SamplingSettings(height=height, width=width, frames=frames, fps=fps, steps=steps, cfg=cfg, eta=eta, seed=seed)
        cond, uncond, guidance = prepare_sampling(model, positive, negative, image, height, width)
        check_request(sampling_model(model), settings)
        progress = runtime.Progress(steps)
        latents = generate_latents(
            sampling_model(model), cond, uncond, settings, callback=lambda i, x, x0: progress.update(i + 1, x0), echoreel=guidance
        )
        samples = unscaled_frames(model, latents)
        runtime.check_interrupted()
        decoded = vae.decode(samples)
        return io.NodeOutput(decoded, {"samples": samples}, as_video(decoded, fps))


def prepare_sampling(model, positive, negative, image, height, width):
    """Load what sampling needs and build (cond, uncond, EchoReel guidance or None)."""
    if model.preset.is_i2v and image is None:
        raise ValueError(f"{model.preset.name} is an image-to-video model: connect an image")
    if image is not None and not model.preset.is_i2v:
        raise ValueError(f"{model.preset.name} is a text-to-video model: disconnect the image")
    patchers = [model.unet] + ([model.image] if model.image is not None else [])
    if model.echoreel is not None:
        patchers.append(model.echoreel.weights)
    runtime.load_to_device(*patchers)
    cond, uncond = text_context(positive, "positive"), text_context(negative, "negative")
    if model.preset.is_i2v:
        cond = torch.cat([cond, image_tokens(model, image, height, width).cpu().float()], dim=1)
        uncond = torch.cat([uncond, image_tokens(model, None, height, width).cpu().float()], dim=1)
    guidance = None
    if model.echoreel is not None:
        applied = model.echoreel
        guidance = EchoReelGuidance(applied.weights.model, applied.features, applied.strength, applied.start, applied.end)
    return cond, uncond, guidance


def sampling_model(model) -> SimpleNamespace:
    """What the core samplers use of a model: the UNet, the preset and the schedule."""
    return SimpleNamespace(unet=model.unet.model, preset=model.preset, schedule=model.schedule)


def unscaled_frames(model, latents: torch.Tensor) -> torch.Tensor:
    """Scaled (b, 4, t, h, w) -> ComfyUI LATENT samples: unscaled SD latents, frames as batch."""
    return rearrange(latents.float().cpu() / model.preset.vae.scale_factor, "b c t h w -> (b t) c h w")


class LongVideoSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_LongVideoSampler", "VideoCrafter Long Video Sampler", "EchoReel/sampling",
            "Samples a long video clip by clip with Reuse-and-Diffuse (VidRD): each clip continues the last one "
            "through reversed noise (FNR), past-dependent noise (PNS) and staged guidance of its first frames "
            "(DSG). Clips are decoded as soon as they are sampled. EchoReel applied to the model acts on every clip.",
            inputs=sampler_inputs(2, "Frames per clip (the models were trained on 16).") + [
                io.Int.Input("clips", default=4, min=1, max=64, tooltip="How many clips to chain."),
                io.Int.Input("overlap", default=4, min=0, max=255,
                             tooltip="M: frames of each clip guided by the previous clip (4 as VidRD)."),
                io.Float.Input("alpha", default=4.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Past-dependent noise: how much of the previous clip's reversed noise is reused (4 as VidRD)."),
                io.Float.Input("beta", default=0.4, min=0.0, max=1.0, step=0.05,
                               tooltip="Staged guidance: the fraction of the steps the first frames follow the previous clip (0.4 as VidRD)."),
                io.Boolean.Input("drop_overlap", default=False,
                                 tooltip="Drop the guided first frames of every clip after the first (off: keep them, as official)."),
                io.Image.Input("image", optional=True, tooltip=IMAGE_INPUT_TOOLTIP),
            ],
            outputs=sampler_outputs("All clips' decoded frames (clips x frames, minus the overlaps when drop_overlap is on)"),
            aliases=["long video", "reuse and diffuse", "vidrd"],
        )

    @classmethod
    def execute(cls, model, positive, negative, vae, width, height, frames, fps, steps, cfg, eta, seed,
                clips, overlap, alpha, beta, drop_overlap, image=None) -> io.NodeOutput:
        settings = SamplingSettings(height=height, width=width, frames=frames, fps=fps, steps=steps, cfg=cfg, eta=eta, seed=seed)
        cond, uncond, guidance = prepare_sampling(model, positive, negative, image, height, width)
        check_request(sampling_model(model), settings, clips=clips)
        progress = runtime.Progress(clips * steps)
        decoded, latents = [], []

        def decode_clip(k: int, clip: torch.Tensor) -> None:  # as soon as a clip is sampled
            samples = unscaled_frames(model, clip)
            latents.append(samples)
            decoded.append(vae.decode(samples).cpu())

        generate_long_latents(
            sampling_model(model), [cond] * clips, uncond, settings, overlap, alpha, beta, drop_overlap, guidance,
            callback=lambda i, x, x0: progress.update(i + 1, x0), decode_clip=decode_clip,
        )
        runtime.check_interrupted()
        frames_out = torch.cat(decoded)
        return io.NodeOutput(frames_out, {"samples": torch.cat(latents)}, as_video(frames_out, fps))
