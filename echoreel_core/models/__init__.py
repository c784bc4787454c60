"""The models, one module per model with the official parameter names (UNets, autoencoder, text and
image encoders, tokenizer, the video model that holds them), their presets (every official model
as data), the one attention entry point and the `operations` namespace every model takes.

May import: sampling (the noise schedule a preset names).
"""
