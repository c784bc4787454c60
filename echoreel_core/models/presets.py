"""Model presets: every supported official model as data, plus tiny versions for tests.

A preset says which classes to build and with which configs, the noise schedule, and the
official defaults (size, frames, fps, guidance). Nothing here is chosen by file name: the
checkpoint loader picks a preset from the keys it finds.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .autoencoder import AutoencoderConfig
from .image_encoders import OpenCLIPVisionConfig, ResamplerConfig
from .text_encoders import CLIPTextConfig, OpenCLIPTextConfig
from .unet_lvdm import LVDMUNetConfig
from .unet_videocrafter import VideoCrafterUNetConfig
from ..sampling.schedule import NoiseSchedule, official_alphas_cumprod, official_scale_arr


@dataclass(frozen=True)
class ModelPreset:
    name: str
    unet: VideoCrafterUNetConfig | LVDMUNetConfig
    text: OpenCLIPTextConfig | CLIPTextConfig
    vae: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    vision: OpenCLIPVisionConfig | None = None  # I2V only
    resampler: ResamplerConfig | None = None  # I2V only
    scale_b: float | None = None  # `scale_arr` end value when the model uses it
    fix_scale_bug: bool = True
    height: int = 320
    width: int = 512
    frames: int = 16
    fps: int = 28
    cfg: float = 12.0

    @property
    def family(self) -> str:
        return "lvdm" if isinstance(self.unet, LVDMUNetConfig) else "videocrafter"

    @property
    def is_i2v(self) -> bool:
        return self.vision is not None

    @property
    def fps_conditioned(self) -> bool:
        return getattr(self.unet, "fps_cond", False)

    def official_schedule(self) -> NoiseSchedule:
        """The official config's abar (and s_t), on the CPU: what a file that stores none gets."""
        scale = official_scale_arr(self.scale_b, fix_scale_bug=self.fix_scale_bug) if self.scale_b else None
        return NoiseSchedule(official_alphas_cumprod(), scale)

    def to_json(self) -> str:
        """Serialised into our safetensors metadata so a file rebuilds its exact model."""
        parts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.dumps({k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in parts.items()})

    @classmethod
    def from_json(cls, text: str) -> "ModelPreset":
        data = json.loads(text)
        unet_cls = LVDMUNetConfig if "num_heads" in data["unet"] else VideoCrafterUNetConfig
        text_cls = CLIPTextConfig if data["text"].get("kind") == "clip" else OpenCLIPTextConfig
        configs = {
            "unet": unet_cls,
            "text": text_cls,
            "vae": AutoencoderConfig,
            "vision": OpenCLIPVisionConfig,
            "resampler": ResamplerConfig,
        }
        for key, config_cls in configs.items():
            if data.get(key) is not None:
                data[key] = _from_dict(config_cls, data[key])
        return cls(**data)


def _from_dict(config_cls, values: dict):
    """Rebuild a frozen config dataclass, turning JSON lists back into tuples."""
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        ModelPreset(
            "lvdm-short-t2v",
            unet=LVDMUNetConfig(),
            text=CLIPTextConfig(),
            height=256,
            width=256,
            fps=8,
            cfg=15.0,
        ),
        ModelPreset(
            "videocrafter1-t2v-512",
            unet=VideoCrafterUNetConfig(relative_position=True),
            text=OpenCLIPTextConfig(),
        ),
        ModelPreset(
            "videocrafter1-t2v-1024",
            unet=VideoCrafterUNetConfig(relative_position=True, fps_cond=True),
            text=OpenCLIPTextConfig(),
            scale_b=0.3,
            height=576,
            width=1024,
        ),
        ModelPreset(
            "videocrafter1-i2v-512",
            unet=VideoCrafterUNetConfig(temporal_conv=True, fps_cond=True, image_cross_attention=True),
            text=OpenCLIPTextConfig(),
            vision=OpenCLIPVisionConfig(),
            resampler=ResamplerConfig(),
            scale_b=0.7,
            fix_scale_bug=False,
            fps=8,
        ),
        ModelPreset(
            "videocrafter2-t2v-512",
            unet=VideoCrafterUNetConfig(temporal_conv=True, fps_cond=True),
            text=OpenCLIPTextConfig(),
            scale_b=0.7,
            fix_scale_bug=False,
        ),
    ]
}


def tiny_preset(name: str) -> ModelPreset:
    """The same architecture as preset `name` at a size that runs on a CPU in milliseconds.

    Tiny models keep the official constants that weights do not reveal (32 norm groups, 64-wide
    heads for VideoCrafter and OpenCLIP text, 80-wide for OpenCLIP vision, 8 heads for LVDM), so
    an official-layout file of this size is detected as exactly this config.
    """
    base = PRESETS[name]
    vae = AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)
    small = dict(channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2, 1), context_dim=64)
    if base.family == "lvdm":
        unet = dataclasses.replace(base.unet, model_channels=32, **small)
        text = CLIPTextConfig(width=64, heads=1, layers=2, intermediate=256)
    else:
        unet = dataclasses.replace(base.unet, model_channels=64, init_attn_heads=1, **small)
        text = OpenCLIPTextConfig(width=64, heads=1, layers=3)
    vision = resampler = None
    if base.is_i2v:
        vision = OpenCLIPVisionConfig(width=80, layers=2, heads=1, patch_size=14, image_size=28, output_dim=64)
        resampler = ResamplerConfig(dim=64, depth=2, dim_head=64, heads=1, num_queries=4, embedding_dim=80, output_dim=64)
    return dataclasses.replace(
        base, name=f"{name}-tiny", unet=unet, text=text, vae=vae, vision=vision, resampler=resampler,
        height=64, width=64, frames=4,
    )
