"""The toy model's architecture and where its shipped weights live.

The toy is VideoCrafter2's text-to-video architecture (UNet3D with temporal convolutions and fps
conditioning, a KL AutoencoderKL, an OpenCLIP-style text transformer with the real CLIP
tokenizer) at a size that trains on a CPU: 64x64 frames, 16 frames. `TOY_PRESETS` holds it by
its latent grid; `TOY_PRESET` is the shipped one (`SHIPPED_LATENT_SIDE`). Sizes and why:
    16 (shipped): a KL-f4 VAE (32 channels, 3 levels) -> 16x16x4 latents; UNet levels (1, 2, 2) =
        16x16, 8x8 and 4x4, attention at 8x8 and 4x4 only (attention at 16x16 made a UNet forward
        and backward pass 1.6 times as slow), so EchoReel's sites are at 8x8 and 4x4.
    8 (the first toy): a KL-f8 VAE (4 levels, as the real models) -> 8x8x4; UNet levels (1, 2) =
        8x8 and 4x4, attention at both. Its objects (12 to 17 pixels wide: two 8-pixel latent
        cells) flicker in size from frame to frame, which the size part of the motion measure
        counts; at 16x16 an object is 3 to 4 cells wide.
    Both: UNet 32 channels, one block per level, 16-wide heads, 8 norm groups (32 groups would
        leave one channel per group at this width); text width 64, 2 layers of 2 heads, its
        context the UNet's 64-wide cross-attention input.
`preset_for_vae` picks the preset whose VAE a file has. `toy_i2v_preset` (`TOY_I2V_PRESET`
shipped) is VideoCrafter1's image-to-video architecture on the same UNet, VAE and text encoder:
the UNet gets the decoupled image cross-attention, and an OpenCLIP-style vision tower (64x64
images in 8x8 patches, width 64, 2 layers) feeds a Resampler (2 layers, 16 queries of the UNet's
64-wide context). It is trained from the text-to-video toy (pretrain.py, stage `i2v`).
The weights' own metadata holds these presets, so loaders never guess them from file names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..models.autoencoder import AutoencoderConfig
from ..models.image_encoders import OpenCLIPVisionConfig, ResamplerConfig
from ..models.text_encoders import OpenCLIPTextConfig
from ..models.presets import PRESETS, ModelPreset

# laid out as ComfyUI's folders, so that the nodes can add these to models/ and input/
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
TOY_MODEL_FILE = "videocrafter/videocrafter2_toy.safetensors"  # VAE + text encoder + UNet (fp16)
TOY_ECHOREEL_FILE = "echoreel/echoreel_videocrafter2_toy.safetensors"  # Action Prism + integration layers
TOY_REFERENCE_FILE = "input/toy_reference.mp4"  # a held-out action (orbiting clockwise), for the demo
TOY_I2V_MODEL_FILE = "videocrafter/videocrafter1_i2v_toy.safetensors"  # the image-to-video toy (fp16)
TOY_I2V_ECHOREEL_FILE = "echoreel/echoreel_videocrafter1_i2v_toy.safetensors"  # EchoReel for it
TOY_FIRST_FRAME_FILE = "input/toy_first_frame.png"  # a red circle where the demo reference's orbit starts
TOY_MOTION_FILE = "echoreel_motion/toy_orbit.safetensors"  # the demo reference's motion, for the prompts below
TOY_MOTION_CAPTION, TOY_MOTION_PROMPT = "a blue square", "a red circle"  # (negative prompt: empty)
SHIPPED_LATENT_SIDE = 16  # the shipped toy's latent grid (TOY_PRESETS)


def _toy_preset(latent_side: int) -> ModelPreset:
    """The toy over latent_side x latent_side latents of 64x64 frames (8: f8, 16: f4)."""
    vc2 = PRESETS["videocrafter2-t2v-512"]
    levels = {8: ((1, 2), (1, 2), (1, 2, 2, 2)), 16: ((1, 2, 2), (2, 4), (1, 2, 2))}
    channel_mult, attention, vae_mult = levels[latent_side]
    unet = dataclasses.replace(
        vc2.unet, model_channels=32, channel_mult=channel_mult, num_res_blocks=1, attention_resolutions=attention,
        head_channels=16, context_dim=64, init_attn_heads=2, init_attn_head_channels=16, norm_groups=8,
    )
    vae = AutoencoderConfig(ch=32, ch_mult=vae_mult, num_res_blocks=1, groups=8)
    text = OpenCLIPTextConfig(width=64, heads=2, layers=2, embed_dim=64, skip_last_layers=0)
    name = "videocrafter2-t2v-toy" if latent_side == 8 else f"videocrafter2-t2v-toy-{latent_side}"
    return dataclasses.replace(vc2, name=name, unet=unet, vae=vae, text=text,
                               height=64, width=64, frames=16, fps=8, cfg=7.5)


TOY_PRESETS = {side: _toy_preset(side) for side in (8, 16)}  # by latent side
TOY_PRESET = TOY_PRESETS[SHIPPED_LATENT_SIDE]


def preset_for_vae(vae: AutoencoderConfig) -> ModelPreset:
    """The toy preset whose VAE has `vae`'s levels (a trained VAE's config differs in its scale factor)."""
    for preset in TOY_PRESETS.values():
        if preset.vae.ch_mult == tuple(vae.ch_mult):
            return preset
    raise ValueError(f"no toy preset has a VAE of levels {tuple(vae.ch_mult)}; "
                     f"known: {[p.vae.ch_mult for p in TOY_PRESETS.values()]}")


def toy_i2v_preset(t2v: ModelPreset) -> ModelPreset:
    """The image-to-video toy grown from the text-to-video toy `t2v` (its UNet, VAE and text, so a
    trained VAE's measured scale factor carries over)."""
    vc1 = PRESETS["videocrafter1-i2v-512"]
    unet = dataclasses.replace(t2v.unet, image_cross_attention=True)
    vision = OpenCLIPVisionConfig(width=64, layers=2, heads=2, patch_size=8, image_size=64, output_dim=64)
    resampler = ResamplerConfig(dim=64, depth=2, dim_head=16, heads=4, num_queries=16, embedding_dim=64,
                                output_dim=unet.context_dim)
    name = t2v.name.replace("videocrafter2-t2v", "videocrafter1-i2v")  # the latent side's suffix stays
    return dataclasses.replace(vc1, name=name, unet=unet, vae=t2v.vae, text=t2v.text, vision=vision,
                               resampler=resampler, height=64, width=64, frames=16, fps=8, cfg=7.5)


TOY_I2V_PRESET = toy_i2v_preset(TOY_PRESET)


def shipped(name: str) -> Path:
    """A file shipped in echoreel_core/toy/shipped, with an error that says how to rebuild it."""
    path = SHIPPED_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: rebuild the toy model with `python -m echoreel_core.toy.retrain --out echoreel_core/toy/shipped`")
    return path
