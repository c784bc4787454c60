"""ComfyUI nodes: thin adapters between ComfyUI types and echoreel_core."""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
