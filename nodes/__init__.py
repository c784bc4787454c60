"""ComfyUI nodes: thin adapters between ComfyUI types and echoreel_core (V1 node API)."""

from . import runtime
from .conditioning import VideoCrafterTextEncode
from .echoreel_nodes import ActionPrismEncode, ApplyEchoReel
from .loaders import LoadEchoReel, LoadVideoCrafterCheckpoint
from .sampler import LongVideoSampler, VideoCrafterSampler
from .video import LoadReferenceVideo

runtime.register_model_folders()

# Node ids are saved in workflows: never rename one.
NODES = {
    "EchoReel_LoadVideoCrafterCheckpoint": (LoadVideoCrafterCheckpoint, "Load VideoCrafter Checkpoint"),
    "EchoReel_LoadEchoReel": (LoadEchoReel, "Load EchoReel"),
    "EchoReel_LoadReferenceVideo": (LoadReferenceVideo, "Load Reference Video"),
    "EchoReel_TextEncode": (VideoCrafterTextEncode, "VideoCrafter Text Encode"),
    "EchoReel_ActionPrismEncode": (ActionPrismEncode, "Action Prism Encode"),
    "EchoReel_ApplyEchoReel": (ApplyEchoReel, "Apply EchoReel to Model"),
    "EchoReel_VideoCrafterSampler": (VideoCrafterSampler, "VideoCrafter Sampler"),
    "EchoReel_LongVideoSampler": (LongVideoSampler, "VideoCrafter Long Video Sampler"),
}
NODE_CLASS_MAPPINGS = {node_id: cls for node_id, (cls, _) in NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: name for node_id, (_, name) in NODES.items()}
