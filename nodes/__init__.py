"""ComfyUI nodes (V3 schema): thin adapters between ComfyUI types and echoreel_core."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import runtime
from .conditioning import VideoCrafterTextEncode
from .echoreel_nodes import ActionPrismEncode, ApplyEchoReel
from .library import FindReferenceVideo
from .loaders import LoadEchoReel, LoadVideoCrafterCheckpoint
from .sampler import LongVideoSampler, VideoCrafterSampler
from .video import LoadReferenceVideo

NODES: list[type[io.ComfyNode]] = [
    LoadVideoCrafterCheckpoint, LoadEchoReel, LoadReferenceVideo, VideoCrafterTextEncode,
    ActionPrismEncode, ApplyEchoReel, VideoCrafterSampler, LongVideoSampler, FindReferenceVideo,
]


class EchoReelExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> EchoReelExtension:
    runtime.register_model_folders()
    return EchoReelExtension()
