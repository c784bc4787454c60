"""ComfyUI-EchoReel: the ComfyUI entry point (V1 node API).

ComfyUI imports this folder as a package; imported as a plain module (no parent package, e.g.
by a test runner), there is nothing to register.
"""

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
