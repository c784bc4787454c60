"""The old path of loading/checkpoints.py (`from echoreel_core.checkpoints import load_video_model`),
kept so that scripts written before the core had folders still run: this name is that module."""

import sys

from .loading import checkpoints

sys.modules[__name__] = checkpoints
