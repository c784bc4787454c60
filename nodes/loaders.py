"""Load VideoCrafter Checkpoint and Load EchoReel."""

from __future__ import annotations

import comfy.sd
import torch

from ..echoreel_core.checkpoints import load_video_model
from ..echoreel_core.detect import vae_config
from ..echoreel_core.echoreel.weights import load_echoreel
from ..echoreel_core.models.autoencoder import AutoencoderKL
from ..echoreel_core.models.tokenizer import CLIPTokenizer
from . import runtime
from .types import ECHOREEL, TEXT_ENCODER, VIDEO_MODEL, TextEncoder, VideoCrafterModel

DTYPES = ["auto", "fp32", "fp16", "bf16"]


def native_vae(vae: AutoencoderKL) -> comfy.sd.VAE:
    """ComfyUI's own VAE built from the checkpoint's autoencoder (same SD KL-f8 keys), so native
    nodes (VAE Decode, VAE Encode) work with it; sized from the weights, not assumed SD size."""
    c = vae.config
    ddconfig = {
        "double_z": True, "z_channels": c.z_channels, "resolution": 256, "in_channels": c.in_channels,
        "out_ch": c.out_ch, "ch": c.ch, "ch_mult": list(c.ch_mult), "num_res_blocks": c.num_res_blocks,
        "attn_resolutions": [], "dropout": 0.0,
    }
    native = comfy.sd.VAE(sd=vae.state_dict(), config={"params": {"ddconfig": ddconfig, "embed_dim": c.embed_dim}})
    native.downscale_ratio = native.upscale_ratio = vae.downscale_factor
    return native


def core_vae(native: comfy.sd.VAE) -> AutoencoderKL:
    """The core autoencoder over a native VAE's weights (for seeded posterior samples), built once."""
    cached = getattr(native, "_echoreel_core_vae", None)
    if cached is None:
        state = {k: v.detach().float().cpu() for k, v in native.first_stage_model.state_dict().items()}
        config = vae_config({k: tuple(v.shape) for k, v in state.items()})
        with torch.device("meta"):
            cached = AutoencoderKL(config)
        cached.load_state_dict(state, assign=True)
        native._echoreel_core_vae = cached.eval()
    return cached


class LoadVideoCrafterCheckpoint:
    DESCRIPTION = (
        "Loads an official VideoCrafter1/2 or LVDM checkpoint (.ckpt/.pt read safely, or our .safetensors). "
        "The model is recognised from the weights, not the file name."
    )
    CATEGORY = "EchoReel/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (VIDEO_MODEL, TEXT_ENCODER, "VAE")
    RETURN_NAMES = ("model", "text_encoder", "vae")
    OUTPUT_TOOLTIPS = (
        "The video diffusion model (UNet, schedule, and for I2V the image encoder).",
        "The checkpoint's own text encoder, for VideoCrafter Text Encode.",
        "The checkpoint's VAE as a native ComfyUI VAE (works with VAE Decode).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ckpt_name": (runtime.model_files("videocrafter"), {"tooltip": "A file in models/videocrafter (or models/checkpoints)."}),
                "dtype": (DTYPES, {"default": "auto", "tooltip": "Weight dtype of the UNet; auto lets ComfyUI choose for your device (fp32 on CPU)."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, ckpt_name, **kwargs):
        return runtime.validate_model_file("videocrafter", ckpt_name)

    def load(self, ckpt_name: str, dtype: str):
        path = runtime.model_path("videocrafter", ckpt_name)
        unet_dtype = runtime.weight_dtype(dtype, runtime.mm.get_torch_device())
        model = load_video_model(path, dtype=torch.float32)
        model.unet.to(unet_dtype)
        image = None
        if model.preset.is_i2v:
            image = runtime.unet_patcher(torch.nn.ModuleDict({"image_encoder": model.image_encoder, "resampler": model.resampler}))
        video_model = VideoCrafterModel(runtime.unet_patcher(model.unet), model.preset, model.schedule, image)
        text = TextEncoder(runtime.text_encoder_patcher(model.text_encoder), CLIPTokenizer(runtime.tokenizer_merges_path()))
        return (video_model, text, native_vae(model.vae))


class LoadEchoReel:
    DESCRIPTION = (
        "Loads EchoReel weights (Action Prism + integration layers): our .safetensors, or the official "
        "checkpoint.pt read safely."
    )
    CATEGORY = "EchoReel/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (ECHOREEL,)
    RETURN_NAMES = ("echoreel",)
    OUTPUT_TOOLTIPS = ("EchoReel weights for one base model family and size.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "echoreel_name": (runtime.model_files("echoreel"), {"tooltip": "A file in models/echoreel."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, echoreel_name, **kwargs):
        return runtime.validate_model_file("echoreel", echoreel_name)

    def load(self, echoreel_name: str):
        echoreel = load_echoreel(runtime.model_path("echoreel", echoreel_name)).eval()
        return (runtime.unet_patcher(echoreel),)
