"""The noise schedule and the samplers (DDIM as official, DPM++ 2M, Reuse-and-Diffuse for long
videos) as small functions over tensors and a denoiser callable: they know no model.

May import: nothing else of the core.
"""
