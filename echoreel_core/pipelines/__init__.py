"""Prompt in, frames out, on a loaded video model: text and image to video (generate.py), long
videos by Reuse-and-Diffuse (long_video.py), and the memory a run needs, known before it starts
(memory.py).

May import: common, models, loading, sampling, echoreel.
"""
