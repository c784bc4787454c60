"""Tiny random models shared by the tests."""

import torch

from echoreel_core.models.video_model import VideoModel
from echoreel_core.models.presets import tiny_preset


def tiny_model(name: str, seed: int = 0) -> VideoModel:
    """The tiny version of preset `name`, with every UNet weight random (no zero-initialised layer
    left to hide a wrong path)."""
    torch.manual_seed(seed)
    model = VideoModel(tiny_preset(name)).eval()
    for p in model.unet.parameters():
        p.data.normal_(0, 0.05)
    return model
