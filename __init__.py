"""ComfyUI-EchoReel: the ComfyUI entry point (V1 node API).

Inside ComfyUI (where `comfy` is importable) this registers the nodes; imported anywhere else,
e.g. by a test runner or a training script, it registers nothing and imports nothing.
"""

import importlib.util

if __package__ and importlib.util.find_spec("comfy") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
