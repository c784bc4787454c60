"""ComfyUI-EchoReel: the ComfyUI entry point (V3 node API: `comfy_entrypoint`).

Inside ComfyUI (where `comfy` is importable) this exposes the extension and the web folder (node
help pages and the upload widget); imported anywhere else, e.g. by a test runner or a training
script, it imports nothing. No NODE_CLASS_MAPPINGS: ComfyUI would take that V1 branch first and
never call the entry point.
"""

import importlib.util

WEB_DIRECTORY = "./web"

if __package__ and importlib.util.find_spec("comfy") is not None:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
else:
    __all__ = ["WEB_DIRECTORY"]
