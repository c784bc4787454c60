"""Which model a state dict holds, read from its keys and shapes (never from a file name).

The family comes from keys that only it has (LVDM's fused `attn1_tmp`, VideoCrafter's
`init_attn`, `temopral_conv`, `to_k_ip`, `fps_embedding`, relative-position tables); sizes come
from weight shapes. What weights cannot show (norm groups, head widths where no relative-position
table reveals them) is the official constant of each family.
"""

from __future__ import annotations

import dataclasses
import re

from ..models.autoencoder import AutoencoderConfig
from ..models.image_encoders import OpenCLIPVisionConfig, ResamplerConfig
from ..models.text_encoders import CLIPTextConfig, OpenCLIPTextConfig
from ..models.unet_lvdm import LVDMUNetConfig
from ..models.presets import PRESETS, ModelPreset

UNET = "model.diffusion_model."
VAE = "first_stage_model."
OPENCLIP_TEXT = "cond_stage_model.model."
CLIP_TEXT = "cond_stage_model.transformer.text_model."
VISION = "embedder.model.visual."
RESAMPLER = "image_proj_model."

VIDEOCRAFTER_HEAD_WIDTH = 64
TEXT_HEAD_WIDTH = 64
VISION_HEAD_WIDTH = 80  # OpenCLIP ViT-H/14: 1280 wide, 16 heads
RESAMPLER_HEAD_WIDTH = 64


class UnknownModelError(ValueError):
    """The state dict is not one of the supported video model families."""


def _sub(shapes: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}


def _count(shapes: dict, pattern: str) -> int:
    """How many distinct integers fill the `(\\d+)` of `pattern` among the keys."""
    regex = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := regex.match(k))})


def detect_family(shapes: dict) -> str:
    """Name of the official preset whose key pattern matches; raises UnknownModelError otherwise."""
    unet = _sub(shapes, UNET)
    if not unet:
        raise UnknownModelError(
            f"no `{UNET}*` keys: this is not a VideoCrafter or LVDM checkpoint "
            f"(first keys: {', '.join(list(shapes)[:3]) or 'none'})"
        )
    keys = "\n".join(unet)
    if "attn1_tmp." in keys:
        return "lvdm-short-t2v"
    if "init_attn." not in keys:
        raise UnknownModelError(
            "the UNet has no temporal layers (no `init_attn` and no `attn1_tmp`): it looks like an "
            "image model such as Stable Diffusion, not VideoCrafter or LVDM"
        )
    relative = "relative_position_k" in keys
    temporal_conv = "temopral_conv" in keys
    fps = "fps_embedding." in keys
    image = "to_k_ip" in keys
    if relative and not temporal_conv and not image:
        return "videocrafter1-t2v-1024" if fps else "videocrafter1-t2v-512"
    if temporal_conv and fps and not relative:
        return "videocrafter1-i2v-512" if image else "videocrafter2-t2v-512"
    raise UnknownModelError(
        f"a VideoCrafter UNet with an unknown combination: relative position {relative}, temporal "
        f"conv {temporal_conv}, fps {fps}, image cross-attention {image}"
    )


def _unet_layout(unet: dict) -> dict:
    """model_channels, channel_mult, num_res_blocks, attention_resolutions, context_dim from shapes."""
    mc = unet["input_blocks.0.0.weight"][0]
    mult, res_per_level, attention, ds = [], 0, [], 1
    blocks = _count(unet, r"input_blocks\.(\d+)\.")
    for i in range(1, blocks):
        if f"input_blocks.{i}.0.op.weight" in unet:  # a downsample closes a level
            ds *= 2
            continue
        cout = unet[f"input_blocks.{i}.0.in_layers.2.weight"][0]
        if len(mult) == 0 or f"input_blocks.{i - 1}.0.op.weight" in unet:
            mult.append(cout // mc)
            res_per_level = 0
        res_per_level += 1
        if f"input_blocks.{i}.1.norm.weight" in unet and ds not in attention:
            attention.append(ds)
    return dict(
        in_channels=unet["input_blocks.0.0.weight"][1],
        out_channels=unet["out.2.weight"][0],
        model_channels=mc,
        channel_mult=tuple(mult),
        num_res_blocks=res_per_level,
        attention_resolutions=tuple(sorted(attention, reverse=True)),
        context_dim=unet["middle_block.1.transformer_blocks.0.attn2.to_k.weight"][1],
    )


def unet_config(name: str, unet: dict):
    layout = _unet_layout(unet)
    base = PRESETS[name].unet
    if isinstance(base, LVDMUNetConfig):  # heads from the middle block's width and its table width
        rows, head = unet["middle_block.1.transformer_blocks.0.attn1_tmp.relative_position_k.embeddings_table"]
        width = unet["middle_block.1.proj_in.weight"][0]
        return dataclasses.replace(base, **layout, num_heads=width // head, temporal_length=(rows - 1) // 2)
    table = unet.get("middle_block.2.transformer_blocks.0.attn1.relative_position_k.embeddings_table")
    head = table[1] if table else VIDEOCRAFTER_HEAD_WIDTH
    init_table = unet.get("init_attn.0.transformer_blocks.0.attn1.relative_position_k.embeddings_table")
    init_head = init_table[1] if init_table else VIDEOCRAFTER_HEAD_WIDTH
    extra = dict(
        head_channels=head,
        init_attn_heads=unet["init_attn.0.proj_in.weight"][0] // init_head,
        init_attn_head_channels=init_head,
    )
    if table:
        extra["temporal_length"] = (table[0] - 1) // 2
    return dataclasses.replace(base, **layout, **extra)


def vae_config(vae: dict) -> AutoencoderConfig:
    ch = vae["encoder.conv_in.weight"][0]
    levels = _count(vae, r"encoder\.down\.(\d+)\.")
    mult = tuple(vae[f"encoder.down.{i}.block.0.conv2.weight"][0] // ch for i in range(levels))
    return AutoencoderConfig(
        ch=ch,
        ch_mult=mult,
        num_res_blocks=_count(vae, r"encoder\.down\.0\.block\.(\d+)\."),
        z_channels=vae["decoder.conv_in.weight"][1],
        embed_dim=vae["post_quant_conv.weight"][0],
        in_channels=vae["encoder.conv_in.weight"][1],
        out_ch=vae["decoder.conv_out.weight"][0],
    )


def text_config(shapes: dict) -> OpenCLIPTextConfig | CLIPTextConfig:
    openclip = _sub(shapes, OPENCLIP_TEXT)
    if openclip:
        vocab, width = openclip["token_embedding.weight"]
        return OpenCLIPTextConfig(
            width=width,
            heads=width // TEXT_HEAD_WIDTH,
            layers=_count(openclip, r"transformer\.resblocks\.(\d+)\."),
            vocab_size=vocab,
            context_length=openclip["positional_embedding"][0],
            mlp_ratio=openclip["transformer.resblocks.0.mlp.c_fc.weight"][0] / width,
        )
    clip = _sub(shapes, CLIP_TEXT)
    if clip:
        vocab, width = clip["embeddings.token_embedding.weight"]
        return CLIPTextConfig(
            width=width,
            heads=width // TEXT_HEAD_WIDTH,
            layers=_count(clip, r"encoder\.layers\.(\d+)\."),
            vocab_size=vocab,
            context_length=clip["embeddings.position_embedding.weight"][0],
            intermediate=clip["encoder.layers.0.mlp.fc1.weight"][0],
        )
    raise UnknownModelError(f"no text encoder keys (`{OPENCLIP_TEXT}*` or `{CLIP_TEXT}*`)")


def vision_config(shapes: dict) -> OpenCLIPVisionConfig:
    vision = _sub(shapes, VISION)
    width, _, patch, _ = vision["conv1.weight"]
    grid = round((vision["positional_embedding"][0] - 1) ** 0.5)
    return OpenCLIPVisionConfig(
        width=width,
        layers=_count(vision, r"transformer\.resblocks\.(\d+)\."),
        heads=width // VISION_HEAD_WIDTH,
        patch_size=patch,
        image_size=grid * patch,
        mlp_ratio=vision["transformer.resblocks.0.mlp.c_fc.weight"][0] / width,
        output_dim=vision["proj"][1],
    )


def resampler_config(shapes: dict) -> ResamplerConfig:
    resampler = _sub(shapes, RESAMPLER)
    _, queries, dim = resampler["latents"]
    inner = resampler["layers.0.0.to_q.weight"][0]
    return ResamplerConfig(
        dim=dim,
        depth=_count(resampler, r"layers\.(\d+)\."),
        dim_head=RESAMPLER_HEAD_WIDTH,
        heads=inner // RESAMPLER_HEAD_WIDTH,
        num_queries=queries,
        embedding_dim=resampler["proj_in.weight"][1],
        output_dim=resampler["proj_out.weight"][0],
        ff_mult=resampler["layers.0.1.1.weight"][0] // dim,
    )


def detect_preset(shapes: dict[str, tuple[int, ...]]) -> ModelPreset:
    """The preset of an official-layout state dict, sized from its shapes.

    Returns the official preset itself when every size matches it, so full-size files report
    their official name; otherwise a copy named `<family>-custom` with the detected sizes.
    """
    name = detect_family(shapes)
    base = PRESETS[name]
    preset = dataclasses.replace(
        base,
        unet=unet_config(name, _sub(shapes, UNET)),
        vae=vae_config(_sub(shapes, VAE)) if _sub(shapes, VAE) else base.vae,
        text=text_config(shapes),
    )
    if base.is_i2v:
        preset = dataclasses.replace(preset, vision=vision_config(shapes), resampler=resampler_config(shapes))
    if preset == base:
        return base
    return dataclasses.replace(preset, name=f"{name}-custom")
