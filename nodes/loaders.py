"""Load VideoCrafter Checkpoint (native MODEL, CLIP, VAE) and Load EchoReel."""

from __future__ import annotations

import comfy.ops
import comfy.sd
import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy_api.latest import io

from ..echoreel_core.loading.checkpoints import load_video_model
from ..echoreel_core.loading.detect import vae_config
from ..echoreel_core.echoreel.weights import load_echoreel
from ..echoreel_core.models.autoencoder import AutoencoderKL
from ..echoreel_core.models.tokenizer import CLIPTokenizer
from . import runtime
from .clip import native_clip
from .common import EchoReelType, check_option, model_file_input, schema
from .model import native_model
from .types import TextEncoderModel

DTYPES = ["auto", "fp32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"]


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
    for module in native.first_stage_model.modules():  # ComfyUI builds 32 groups; the toy VAE has fewer
        if isinstance(module, torch.nn.GroupNorm):
            module.num_groups = c.groups
    native._echoreel_core_vae = vae.float().eval()  # Action Prism Encode's seeded posterior: this exact VAE
    return native


def core_vae(native: comfy.sd.VAE) -> AutoencoderKL:
    """The core autoencoder of a native VAE (for seeded posterior samples): the checkpoint's own from
    Load VideoCrafter Checkpoint, or one rebuilt once from another loader's VAE weights."""
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
            "Loads an official VideoCrafter1/2 or LVDM checkpoint (.ckpt/.pt read safely, or our .safetensors) as a "
            "native MODEL (KSampler and every ComfyUI sampler run it), CLIP (CLIPTextEncode) and VAE. "
            "The model is recognised from the weights, not the file name.",
            inputs=[
                model_file_input("ckpt_name", "videocrafter"),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="Storage dtype of the UNet's weights; auto lets ComfyUI choose for your device "
                                       "(fp32 on CPU). fp8 halves fp16's memory and computes in your device's "
                                       "compute dtype."),
            ],
            outputs=[
                io.Model.Output("model", display_name="MODEL",
                                tooltip="The video diffusion model (eps, the checkpoint's schedule, 5-D video latents)."),
                io.Clip.Output("text_encoder", display_name="CLIP",
                               tooltip="The checkpoint's own text encoder, for CLIPTextEncode."),
                io.Vae.Output("vae", display_name="VAE",
                              tooltip="The checkpoint's VAE (decode videos with VideoCrafter Decode)."),
            ],
            aliases=["checkpoint loader", "video model"],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name: str) -> bool | str:
        return runtime.validate_model_file("videocrafter", ckpt_name)

    @classmethod
    def execute(cls, ckpt_name: str, dtype: str) -> io.NodeOutput:
        path = runtime.model_path("videocrafter", ckpt_name)
        check_option("dtype", dtype, DTYPES)
        core = load_video_model(path, dtype=None)  # the file's dtype; the native parts cast from it
        model = native_model(core.preset, core.schedule, core.unet.state_dict(), dtype)
        if core.preset.is_i2v:
            image = torch.nn.ModuleDict({"image_encoder": core.image_encoder, "resampler": core.resampler}).float()
            model.model.image_encoder = runtime.text_encoder_patcher(image)
        clip = native_clip(core)
        clip.echoreel_text_encoder = TextEncoderModel(runtime.text_encoder_patcher(core.text_encoder),
                                                      CLIPTokenizer(runtime.tokenizer_merges_path()))
        return io.NodeOutput(model, clip, native_vae(core.vae))


class LoadEchoReel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_LoadEchoReel", "Load EchoReel", "EchoReel/loaders",
            "Loads EchoReel weights (Action Prism + integration layers): our .safetensors, or the official "
            "checkpoint.pt read safely.",
            inputs=[model_file_input("echoreel_name", "echoreel")],
            outputs=[EchoReelType.Output("echoreel", display_name="echoreel",
                                            tooltip="EchoReel weights for one base model family and size.")],
            aliases=["action prism weights"],
        )

    @classmethod
    def validate_inputs(cls, echoreel_name: str) -> bool | str:
        return runtime.validate_model_file("echoreel", echoreel_name)

    @classmethod
    def execute(cls, echoreel_name: str) -> io.NodeOutput:
        # comfy.ops layers: ComfyUI may load them partially with the UNet (low VRAM) and cast at use
        echoreel = load_echoreel(runtime.model_path("echoreel", echoreel_name), operations=comfy.ops.manual_cast,
                                 attention=optimized_attention).eval()
        return io.NodeOutput(runtime.unet_patcher(echoreel))
