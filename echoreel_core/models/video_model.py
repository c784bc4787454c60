"""One loaded video model: the parts an official checkpoint holds, built from a preset.

The official files keep each part under its own key prefix; `COMPONENT_PREFIXES` is that map,
in one place, for loading and for saving in the official key names.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .attention import AttentionFn
from .presets import ModelPreset
from .autoencoder import AutoencoderKL
from .image_encoders import OpenCLIPVisionEncoder, Resampler
from .ops import compute_dtype, module_device, set_attention
from .text_encoders import CLIPTextConfig, CLIPTextEncoder, OpenCLIPTextEncoder
from .tokenizer import CLIPTokenizer
from .unet_lvdm import LVDMUNet
from .unet_videocrafter import VideoCrafterUNet


def component_prefixes(preset: ModelPreset) -> dict[str, str]:
    """Attribute of VideoModel -> key prefix in the official checkpoints."""
    prefixes = {
        "unet": "model.diffusion_model.",
        "vae": "first_stage_model.",
        "text_encoder": (
            "cond_stage_model.transformer.text_model."
            if isinstance(preset.text, CLIPTextConfig)
            else "cond_stage_model.model."
        ),
    }
    if preset.is_i2v:
        prefixes["image_encoder"] = "embedder.model.visual."
        prefixes["resampler"] = "image_proj_model."
    return prefixes


class VideoModel(nn.Module):
    """UNet, VAE, text encoder (and for I2V the CLIP image encoder and Resampler) plus the schedule.

    The schedule is a plain attribute, not a buffer, so `.to(dtype)` never rounds abar or s_t.
    dtype, device, operations, attention are handed to every part (models/ops.py): with no
    operations namespace (the core's default, torch.nn) every part is initialised; with one, the
    parts wait for a state dict.
    """

    def __init__(self, preset: ModelPreset, dtype: torch.dtype | None = None, device=None, operations=None,
                 attention: AttentionFn | None = None):
        super().__init__()
        self.preset = preset
        build = dict(dtype=dtype, device=device, operations=operations, attention=attention)
        unet = LVDMUNet if preset.family == "lvdm" else VideoCrafterUNet
        self.unet = unet(preset.unet, **build)
        self.vae = AutoencoderKL(preset.vae, **build)
        is_clip = isinstance(preset.text, CLIPTextConfig)
        self.text_encoder = (CLIPTextEncoder if is_clip else OpenCLIPTextEncoder)(preset.text, **build)
        if preset.is_i2v:
            self.image_encoder = OpenCLIPVisionEncoder(preset.vision, **build)
            self.resampler = Resampler(preset.resampler, **build)
        self.schedule = preset.official_schedule()
        self._tokenizer: CLIPTokenizer | None = None

    @property
    def tokenizer(self) -> CLIPTokenizer:
        if self._tokenizer is None:
            self._tokenizer = CLIPTokenizer()
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: CLIPTokenizer) -> None:
        self._tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        """Where the UNet's weights are."""
        return module_device(self.unet)

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's compute dtype (ops.compute_dtype: its weights' dtype unless they are fp8 or
        `unet.compute_dtype` is set), which latents and text contexts are cast to."""
        return compute_dtype(self.unet)

    def initialize_weights(self) -> None:
        for part in self.children():
            part.initialize_weights()

    def set_attention(self, attention: AttentionFn | None) -> None:
        """Route every part's softmax attention through `attention` (None: SDPA)."""
        set_attention(self, attention)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> the UNet's text context (b, 77, context_dim)."""
        return self.text_encoder.encode(texts, self.tokenizer)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor | None, batch_size: int = 1) -> torch.Tensor:
        """I2V image tokens (b, 16, 1024) from (b, 3, H, W) in [-1, 1]; None gives the official
        unconditional tokens: a mid-grey 224x224 image (0 in [-1, 1])."""
        if image is None:
            size = self.preset.vision.image_size
            pixels = torch.zeros(batch_size, 3, size, size, device=self.device)
        else:
            pixels = image.to(self.device)
        features = self.image_encoder(self.image_encoder.preprocess(pixels).to(self.dtype))
        return self.resampler(features)
