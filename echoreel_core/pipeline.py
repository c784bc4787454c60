"""The old path of pipelines/generate.py (`from echoreel_core.pipeline import SamplingSettings,
text_to_video`), kept so that scripts written before the core had folders still run: this name is
that module."""

import sys

from .pipelines import generate

sys.modules[__name__] = generate
