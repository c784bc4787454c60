"""Test-only stand-in for `torchvision.ops` (see tests/comfyui_stubs/README.md)."""
from _standin import module_getattr

__getattr__ = module_getattr(__name__)
