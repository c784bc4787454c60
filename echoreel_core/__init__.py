"""EchoReel core: pure PyTorch (no ComfyUI imports) video diffusion models, EchoReel, samplers, video I/O."""
