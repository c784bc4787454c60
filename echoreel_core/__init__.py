"""EchoReel core: pure PyTorch (no ComfyUI imports), one folder per job, imports one way (up).

    common      atomic file writes, the command lines' threads and argument types
    sampling    the noise schedule and the samplers, over a denoiser callable
    models      the models with the official parameter names, their presets, attention
    video_io    reading reference videos, writing generated ones
    loading     which model a checkpoint holds; reading it safely; our safetensors format
    echoreel    the Action Prism and integration layers, their weights, action features
    pipelines   prompt in, frames out: text/image to video, long videos, the memory a run needs
    motion      motion files and Motion Match         library   reference retrieval
    training    the trainer: config, data and caches, the loop and its parts, processes
    toy         the toy world, its models and evaluation (on top, with the entry points)

Each folder's docstring says what it may import (tests/test_layout.py checks every import). The
top-level modules are the `python -m` entry points (demo, convert, train) and two old paths kept
for scripts (checkpoints, pipeline).
"""
