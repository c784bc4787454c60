"""VideoCrafter Sampler: the official DDIM for text-to-video and image-to-video, EchoReel included."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from einops import rearrange

from ..echoreel_core.pipeline import EchoReelGuidance, SamplingSettings, generate_latents, prepare_image
from . import runtime
from .echoreel_nodes import text_context
from .types import VIDEO_MODEL


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


class VideoCrafterSampler:
    DESCRIPTION = (
        "Samples a video with DDIM exactly as the official VideoCrafter/LVDM sampler (eta 1, cfg 12 by default). "
        "Connect an image for image-to-video models. EchoReel applied to the model is attached only while it runs."
    )
    CATEGORY = "EchoReel/sampling"
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("frames", "latent")
    OUTPUT_TOOLTIPS = (
        "The decoded frames (t, h, w, 3) in 0..1, for Video Combine or Save Animated WEBP.",
        "Unscaled SD-VAE latents with frames as batch (native VAE Decode decodes them).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (VIDEO_MODEL, {"tooltip": "From Load VideoCrafter Checkpoint or Apply EchoReel to Model."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt, from VideoCrafter Text Encode."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt (empty text = the official unconditional prompt)."}),
                "vae": ("VAE", {"tooltip": "The checkpoint's VAE, to decode the frames."}),
                "width": ("INT", {"default": 512, "min": 16, "max": 4096, "step": 16, "tooltip": "Video width in pixels (512 for VideoCrafter 512 models, 256 for LVDM)."}),
                "height": ("INT", {"default": 320, "min": 16, "max": 4096, "step": 16, "tooltip": "Video height in pixels (320 for VideoCrafter 512 models, 256 for LVDM)."}),
                "frames": ("INT", {"default": 16, "min": 1, "max": 256, "tooltip": "Frames to generate (the models were trained on 16)."}),
                "fps": ("INT", {"default": 28, "min": 1, "max": 120, "tooltip": "The fps conditioning of VideoCrafter2, I2V and 1024 models (ignored by the others)."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": "DDIM steps (50 as official)."}),
                "cfg": ("FLOAT", {"default": 12.0, "min": 1.0, "max": 100.0, "step": 0.5, "tooltip": "Classifier-free guidance scale (12 as official; 1 runs only the prompt branch)."}),
                "eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "DDIM eta (1.0 as official; 0 is deterministic DDIM)."}),
                "seed": ("INT", {"default": 123, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True, "tooltip": "The noise seed (drawn on the CPU: the same video on every device)."}),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "The first-frame image for image-to-video models."}),
            },
        }

    def sample(self, model, positive, negative, vae, width, height, frames, fps, steps, cfg, eta, seed, image=None):
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
        settings = SamplingSettings(height=height, width=width, frames=frames, fps=fps, steps=steps, cfg=cfg, eta=eta, seed=seed)
        progress = runtime.Progress(steps)
        sampling_model = SimpleNamespace(unet=model.unet.model, preset=model.preset, schedule=model.schedule)
        latents = generate_latents(
            sampling_model, cond, uncond, settings, callback=lambda i, x, x0: progress.update(i + 1, x0), echoreel=guidance
        )
        scale = model.preset.vae.scale_factor
        samples = rearrange(latents.float().cpu() / scale, "b c t h w -> (b t) c h w")  # unscaled, frames as batch
        runtime.check_interrupted()
        return (vae.decode(samples), {"samples": samples})
