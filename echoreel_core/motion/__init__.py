"""Motion as an asset: action features saved to a file and loaded for the weights that made them,
and Motion Match, how closely one video's motion follows another's.

May import: common, models, loading, sampling, echoreel, video_io (cli.py, an entry point: any part).

- file.py: the motion file (safetensors: cond/uncond features and metadata), save, read, load
  with the check that the EchoReel weights are the ones that made it.
- fingerprint.py: the hashes it records (the Prism's weights, the source video, its frames).
- cli.py: `python -m echoreel_core.motion encode VIDEO ... --out FILE` and `info FILE`.
- match.py: Motion Match's score from dense optical flow (OpenCV, imported only when it runs).
"""

from .file import (
    FORMAT,
    PROVENANCE,
    VERSION,
    Motion,
    MotionFileError,
    check_weights,
    describe,
    load_motion,
    read_motion,
    save_motion,
    weights_identity,
)
from .fingerprint import file_sha256, frames_sha256, prism_sha256

__all__ = [
    "FORMAT",
    "PROVENANCE",
    "VERSION",
    "Motion",
    "MotionFileError",
    "check_weights",
    "describe",
    "file_sha256",
    "frames_sha256",
    "load_motion",
    "prism_sha256",
    "read_motion",
    "save_motion",
    "weights_identity",
]
