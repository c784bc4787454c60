"""Test-only stand-in for `torchvision.transforms` (see tests/comfyui_stubs/README.md)."""
from _standin import module_getattr

__version__ = "0.0.0+standin"
__getattr__ = module_getattr(__name__)
