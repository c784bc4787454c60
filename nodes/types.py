"""The objects that travel between this pack's nodes (ComfyUI custom types).

Each holds core objects wrapped in ComfyUI ModelPatchers, so ComfyUI's model management decides
where the weights live. They are immutable: a node that changes one returns a new one.
"""

from __future__ import annotations

from dataclasses import dataclass

from comfy.model_patcher import ModelPatcher

from ..echoreel_core.echoreel.features import ActionFeatures
from ..echoreel_core.models.tokenizer import CLIPTokenizer
from ..echoreel_core.presets import ModelPreset
from ..echoreel_core.sampling.schedule import NoiseSchedule

@dataclass(frozen=True)
class AppliedEchoReel:
    weights: ModelPatcher  # wraps an echoreel_core EchoReel
    features: ActionFeatures
    strength: float
    start: float
    end: float


@dataclass(frozen=True)
class VideoCrafterModel:
    """VIDEOCRAFTER_MODEL: the UNet (and for I2V the image encoder and Resampler), the preset and
    schedule, and the EchoReel applied to it, which the sampler attaches only while it runs."""

    unet: ModelPatcher
    preset: ModelPreset
    schedule: NoiseSchedule
    image: ModelPatcher | None = None  # a ModuleDict with `image_encoder` and `resampler`
    echoreel: AppliedEchoReel | None = None


@dataclass(frozen=True)
class TextEncoderModel:
    """VIDEOCRAFTER_TEXT_ENCODER: the checkpoint's own text encoder and the CLIP tokenizer."""

    patcher: ModelPatcher
    tokenizer: CLIPTokenizer
