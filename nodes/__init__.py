"""ComfyUI nodes (V3 schema): thin adapters between ComfyUI types and echoreel_core."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import motion_control, motion_files, motion_match, runtime
from .conditioning import ImageConditioning, VideoCrafterTextEncode, VideoFps
from .echoreel_nodes import ActionPrismEncode, ApplyEchoReel
from .latents import DecodeVideo, EmptyVideoLatent
from .library import FindReferenceVideo
from .loaders import LoadEchoReel, LoadVideoCrafterCheckpoint
from .sampler import LongVideoSampler, OfficialDDIMSampler, VideoCrafterSampler
from .video import LoadReferenceVideo

NODES: list[type[io.ComfyNode]] = [
    LoadVideoCrafterCheckpoint, LoadEchoReel, LoadReferenceVideo, VideoCrafterTextEncode, VideoFps, ImageConditioning,
    EmptyVideoLatent, DecodeVideo, ActionPrismEncode, ApplyEchoReel, VideoCrafterSampler, OfficialDDIMSampler,
    LongVideoSampler, FindReferenceVideo, *motion_files.NODES, *motion_control.NODES, *motion_match.NODES,
]


class EchoReelExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> EchoReelExtension:
    runtime.register_model_folders()
    return EchoReelExtension()
