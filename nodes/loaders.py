"""Load VideoCrafter Checkpoint and Load EchoReel."""

from __future__ import annotations

import comfy.sd
import torch
from comfy_api.latest import io

from ..echoreel_core.checkpoints import load_video_model
from ..echoreel_core.detect import vae_config
from ..echoreel_core.echoreel.weights import load_echoreel
from ..echoreel_core.models.autoencoder import AutoencoderKL
from ..echoreel_core.models.tokenizer import CLIPTokenizer
from . import runtime
from .common import EchoReelType, TextEncoderType, VideoModelType, check_option, schema
from .types import TextEncoderModel, VideoCrafterModel

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


class LoadVideoCrafterCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_LoadVideoCrafterCheckpoint", "Load VideoCrafter Checkpoint", "EchoReel/loaders",
            "Loads an official VideoCrafter1/2 or LVDM checkpoint (.ckpt/.pt read safely, or our .safetensors). "
            "The model is recognised from the weights, not the file name.",
            inputs=[
                io.Combo.Input("ckpt_name", options=runtime.model_files("videocrafter"),
                               tooltip="A file in models/videocrafter (or models/checkpoints)."),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="Weight dtype of the UNet; auto lets ComfyUI choose for your device (fp32 on CPU)."),
            ],
            outputs=[
                VideoModelType.Output("model", display_name="model",
                                  tooltip="The video diffusion model (UNet, schedule, and for I2V the image encoder)."),
                TextEncoderType.Output("text_encoder", display_name="text_encoder",
                                   tooltip="The checkpoint's own text encoder, for VideoCrafter Text Encode."),
                io.Vae.Output("vae", display_name="vae",
                              tooltip="The checkpoint's VAE as a native ComfyUI VAE (works with VAE Decode)."),
            ],
            aliases=["checkpoint loader", "video model"],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name: str) -> bool | str:
        return runtime.validate_model_file("videocrafter", ckpt_name)

    @classmethod
    def execute(cls, ckpt_name: str, dtype: str) -> io.NodeOutput:
        path = runtime.model_path("videocrafter", ckpt_name)
        unet_dtype = runtime.weight_dtype(check_option("dtype", dtype, DTYPES), runtime.mm.get_torch_device())
        model = load_video_model(path, dtype=torch.float32)
        model.unet.to(unet_dtype)
        image = None
        if model.preset.is_i2v:
            image = runtime.unet_patcher(torch.nn.ModuleDict({"image_encoder": model.image_encoder, "resampler": model.resampler}))
        video_model = VideoCrafterModel(runtime.unet_patcher(model.unet), model.preset, model.schedule, image)
        text = TextEncoderModel(runtime.text_encoder_patcher(model.text_encoder), CLIPTokenizer(runtime.tokenizer_merges_path()))
        return io.NodeOutput(video_model, text, native_vae(model.vae))


class LoadEchoReel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_LoadEchoReel", "Load EchoReel", "EchoReel/loaders",
            "Loads EchoReel weights (Action Prism + integration layers): our .safetensors, or the official "
            "checkpoint.pt read safely.",
            inputs=[io.Combo.Input("echoreel_name", options=runtime.model_files("echoreel"), tooltip="A file in models/echoreel.")],
            outputs=[EchoReelType.Output("echoreel", display_name="echoreel",
                                            tooltip="EchoReel weights for one base model family and size.")],
            aliases=["action prism weights"],
        )

    @classmethod
    def validate_inputs(cls, echoreel_name: str) -> bool | str:
        return runtime.validate_model_file("echoreel", echoreel_name)

    @classmethod
    def execute(cls, echoreel_name: str) -> io.NodeOutput:
        echoreel = load_echoreel(runtime.model_path("echoreel", echoreel_name)).eval()
        return io.NodeOutput(runtime.unet_patcher(echoreel))
