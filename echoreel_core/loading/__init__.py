"""Loading official checkpoints: which model a state dict holds, read from its keys and shapes
(detect.py), and reading checkpoints safely and loading them strictly, with our safetensors format
(checkpoints.py).

May import: common, models.
"""
