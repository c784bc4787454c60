"""The toy model's architecture and where its shipped weights live.

`TOY_PRESET` is VideoCrafter2's text-to-video architecture (UNet3D with temporal convolutions and
fps conditioning, KL-f8 AutoencoderKL, OpenCLIP-style text transformer with the real CLIP
tokenizer) at a size that trains on a CPU: 64x64 frames -> 8x8x4 latents, 16 frames. Sizes and
why:
    VAE: 32 channels, 4 levels (f8, as the real models); one block per level.
    UNet: 32 channels, levels (1, 2) = 8x8 and 4x4, one block per level, attention at both;
        16-wide heads, 8 norm groups (32 groups would leave one channel per group at this width).
    Text: width 64, 2 layers of 2 heads; its context is the UNet's 64-wide cross-attention input.
The weights' own metadata holds this preset, so loaders never guess it from file names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..models.autoencoder import AutoencoderConfig
from ..models.text_encoders import OpenCLIPTextConfig
from ..presets import PRESETS, ModelPreset

# laid out as ComfyUI's folders, so that the nodes can add these to models/ and input/
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
TOY_MODEL_FILE = "videocrafter/videocrafter2_toy.safetensors"  # VAE + text encoder + UNet (fp16)
TOY_ECHOREEL_FILE = "echoreel/echoreel_videocrafter2_toy.safetensors"  # Action Prism + integration layers
TOY_REFERENCE_FILE = "input/toy_reference.mp4"  # a held-out action (orbiting clockwise), for the demo


def _toy_preset() -> ModelPreset:
    vc2 = PRESETS["videocrafter2-t2v-512"]
    unet = dataclasses.replace(
        vc2.unet, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
        head_channels=16, context_dim=64, init_attn_heads=2, init_attn_head_channels=16, norm_groups=8,
    )
    vae = AutoencoderConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1, groups=8)
    text = OpenCLIPTextConfig(width=64, heads=2, layers=2, embed_dim=64, skip_last_layers=0)
    return dataclasses.replace(vc2, name="videocrafter2-t2v-toy", unet=unet, vae=vae, text=text,
                               height=64, width=64, frames=16, fps=8, cfg=7.5)


TOY_PRESET = _toy_preset()


def shipped(name: str) -> Path:
    """A file shipped in echoreel_core/toy/shipped, with an error that says how to rebuild it."""
    path = SHIPPED_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: rebuild the toy model with `python -m echoreel_core.toy.retrain --out echoreel_core/toy/shipped`")
    return path
