"""VideoCrafter and LVDM as native ComfyUI models: a BaseModel around the core UNet.

KSampler, SamplerCustomAdvanced and every ComfyUI sampler and scheduler run the result; other
packs' patches reach it through `transformer_options`. What ComfyUI needs from a model and this
module supplies (facts: ../shared/docs/comfyui-native.md §1):
- the UNet built by BaseModel from ComfyUI's `operations` (storage in fp8/fp16/bf16, computed in
  the device's compute dtype, partial loading in low VRAM) and `optimized_attention`;
- eps prediction on the checkpoint's own abar; for `scale_arr` models (VideoCrafter2, I2V, VC1-1024)
  sigma' = sigma / s_t and the model input x * sqrt(abar_t) * s_t, which is the official
  parameterisation exactly (x_vp = sqrt(abar) s (x0 + sigma' eps));
- 5-D video latents (b, 4, t, h, w) with the SD scale factor;
- fps and I2V image tokens as conditioning entries (`extra_conds`), defaulted so that cond and
  uncond always batch together;
- EchoReel, and any other pack's patch under the same key, called at the 16 integration sites.
"""

from __future__ import annotations

import functools

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_sampling
import comfy.patcher_extension
import comfy.supported_models_base
import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy.model_patcher import ModelPatcher

from ..echoreel_core.echoreel.integration import integration_sites
from ..echoreel_core.pipelines.memory import estimate_sampling_memory
from ..echoreel_core.models.unet_lvdm import LVDMUNet
from ..echoreel_core.models.unet_videocrafter import VideoCrafterUNet
from ..echoreel_core.models.presets import ModelPreset
from ..echoreel_core.sampling.dpmpp import sigma_table
from ..echoreel_core.sampling.schedule import NoiseSchedule

# the transformer_options["patches"] key whose patches run at every integration site:
# patch(tokens ((b h w), t, c), extra_options) -> tokens (set_model_patch(patch, SITE_PATCH))
SITE_PATCH = "echoreel_integration"


class VideoLatent(comfy.latent_formats.SD15):
    """SD's 4-channel latents with a time axis: (b, 4, t, h, w), scaled by the checkpoint's VAE
    factor (0.18215 for every official model; the toy's own). No TAESD video decoder exists for
    them, so previews use the SD15 RGB factors (first frame)."""

    latent_dimensions = 3

    def __init__(self, scale_factor: float = 0.18215):
        super().__init__(scale_factor)
        self.taesd_decoder_name = None


def _unet_class(preset: ModelPreset) -> type:
    base = LVDMUNet if preset.family == "lvdm" else VideoCrafterUNet
    return _native_unet(base)


@functools.cache
def _native_unet(base: type) -> type:
    """The core UNet class with ComfyUI's calling convention (one subclass per UNet family, so the
    state dict keeps the official keys under `diffusion_model.`, where LoRA loaders look)."""
    return type(f"Native{base.__name__}", (NativeUNetMixin, base), {"__module__": __name__})


class NativeUNetMixin:
    """forward(x, timesteps, context, control, transformer_options, fps, image_context), what
    BaseModel._apply_model calls, over the core forward(x, timesteps, context, fps)."""

    def __init__(self, preset: ModelPreset, dtype=None, device=None, operations=None, compute_dtype=None):
        super().__init__(preset.unet, dtype=dtype, device=device, operations=operations, attention=optimized_attention)
        self.preset = preset
        self.dtype = dtype  # BaseModel.get_dtype() reads it
        self.compute_dtype = compute_dtype  # the manual-cast dtype, or None: the stored dtype
        modules = dict(self.named_modules())
        self.sites = integration_sites(self)
        self.site_blocks = [modules[site.path] for site in self.sites]
        self.requires_grad_(False)  # inference only (ComfyUI 0.33 does this too; sub-quadratic attention needs it)

    def forward(self, x, timesteps, context=None, control=None, transformer_options={}, fps=None, image_context=None,
                **kwargs):
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._native_forward, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                     transformer_options),
        ).execute(x, timesteps, context, control, transformer_options, fps, image_context, **kwargs)

    def _native_forward(self, x, timesteps, context, control, transformer_options, fps, image_context, **kwargs):
        # x: (rows, 4, t, h, w), rows = chunks (cond/uncond) x batch; context: (rows, 77, D)
        if control is not None:
            raise ValueError("ControlNet is not supported by VideoCrafter/LVDM models (their UNet has no control inputs)")
        if image_context is not None:  # I2V: the image tokens follow the 77 text tokens, as official
            context = torch.cat([context, image_context.to(context)], dim=1)
        patches = transformer_options.get("patches", {}).get(SITE_PATCH, [])
        if not patches:
            return super().forward(x, timesteps, context, fps=fps)
        options = {k: v for k, v in transformer_options.items() if k not in ("patches", "patches_replace")}
        for index, block in enumerate(self.site_blocks):
            if block.action_integration is not None:
                raise RuntimeError(f"{self.sites[index].path} already has an integration hook: EchoReel is attached twice")
            block.action_integration = SitePatches(patches, dict(options, echoreel_site=index))
        try:
            return super().forward(x, timesteps, context, fps=fps)
        finally:
            for block in self.site_blocks:
                block.action_integration = None


class SitePatches:
    """The callable a site's block runs between its second temporal attention and its FF while a
    patched model samples: every patch under SITE_PATCH in turn, with the site's options."""

    def __init__(self, patches: list, options: dict):
        self.patches = patches
        self.options = options

    def __call__(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        # tokens: ((b h w), t, c) on an (h, w) grid
        options = dict(self.options, echoreel_grid=grid)
        for patch in self.patches:
            tokens = patch(tokens, options)
        return tokens


class VideoModelSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    """Discrete eps sampling on the checkpoint's stored abar (and s_t), kept as `alphas_cumprod`
    and `scale_arr` float32 buffers for the official DDIM sampler.

    With s_t (scale_arr) the sigmas are sigma_t / s_t and the model input is x * sqrt(abar_t) * s_t at
    the nearest timestep (the one the UNet is given); a pure-noise start is x_vp = noise, as the
    official sampler starts. Without s_t this is ComfyUI's own EPS discrete sampling."""

    def __init__(self, schedule: NoiseSchedule):
        super().__init__(None)
        table = sigma_table(schedule)  # the core's (its DPM++ sampler uses the same table)
        self.register_buffer("alphas_cumprod", table.alphas_cumprod.clone())
        self.register_buffer("scale_arr", None if table.scale_arr is None else table.scale_arr.clone())
        self.register_buffer("sigmas", table.sigmas.clone())
        self.register_buffer("log_sigmas", table.log_sigmas.clone())
        self.num_timesteps = table.sigmas.shape[0]

    def vp_scale(self, sigma: torch.Tensor) -> torch.Tensor:
        """sqrt(abar_t) * s_t at sigma's timestep: x_vp = x_k * vp_scale."""
        t = self.timestep(sigma).to(self.alphas_cumprod.device).long()
        scale = self.alphas_cumprod[t].sqrt()
        if self.scale_arr is not None:
            scale = scale * self.scale_arr[t]
        return scale.to(sigma.device, sigma.dtype)

    def calculate_input(self, sigma, noise):
        if self.scale_arr is None:
            return super().calculate_input(sigma, noise)
        return noise * comfy.model_sampling.reshape_sigma(self.vp_scale(sigma), noise.ndim)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        if self.scale_arr is None or not max_denoise:
            return super().noise_scaling(sigma, noise, latent_image, max_denoise)
        return noise / comfy.model_sampling.reshape_sigma(self.vp_scale(sigma), noise.ndim) + latent_image


class VideoModelConfig(comfy.supported_models_base.BASE):
    """What BaseModel reads: the UNet's constructor arguments, the latent format, no extra UNet
    kwargs (BASE would inject num_heads), and the inference dtypes a video UNet runs in."""

    unet_extra_config = {}
    latent_format = VideoLatent
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]


class VideoCrafterBaseModel(comfy.model_base.BaseModel):
    """A VideoCrafter/LVDM UNet as a ComfyUI model (eps, its own schedule, 5-D latents)."""

    def __init__(self, preset: ModelPreset, schedule: NoiseSchedule, model_config: VideoModelConfig, device=None):
        super().__init__(model_config, comfy.model_base.ModelType.EPS, device=device, unet_model=_unet_class(preset))
        self.preset = preset
        self.model_sampling = VideoModelSampling(schedule)
        self.image_encoder: ModelPatcher | None = None  # I2V: the CLIP image encoder + Resampler

    def extra_conds(self, **kwargs):
        """fps and image tokens from a conditioning entry; defaults for entries without them
        (CLIPTextEncode's), so that cond and uncond keep the same keys and batch together."""
        out = super().extra_conds(**kwargs)
        fps = kwargs.get("fps", self.preset.fps)
        out["fps"] = comfy.conds.CONDRegular(torch.tensor([int(fps)], dtype=torch.long))
        if self.preset.is_i2v:
            image_context = kwargs.get("image_context")
            if image_context is None:
                raise ValueError(f"{self.preset.name} is an image-to-video model: put every prompt (positive and negative) "
                                 "through VideoCrafter Image Conditioning")
            out["image_context"] = comfy.conds.CONDRegular(image_context)
        return out

    def memory_required(self, input_shape, cond_shapes={}):
        """The core's meta-device count of one UNet call's activations (pipelines/memory.py) for this shape."""
        rows, _, frames, height, width = input_shape
        dtype = self.manual_cast_dtype or self.get_dtype()
        return _activation_bytes(self.preset, rows, frames, height, width, dtype)


@functools.lru_cache(maxsize=32)
def _activation_bytes(preset: ModelPreset, rows: int, frames: int, height: int, width: int, dtype) -> int:
    f = 2 ** (len(preset.vae.ch_mult) - 1)
    batch = max(1, (rows + 1) // 2)  # the estimate counts a CFG-batched call of 2 x batch rows
    return estimate_sampling_memory(preset, batch, frames, height * f, width * f, dtype).unet_bytes


WEIGHT_DTYPES = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
    "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2,
}


def native_model(preset: ModelPreset, schedule: NoiseSchedule, unet_state: dict[str, torch.Tensor],
                 weight_dtype: str = "auto") -> ModelPatcher:
    """The MODEL of a checkpoint's UNet: storage dtype as ComfyUI's UNETLoader chooses it ("auto") or
    as asked, computed in the device's manual-cast dtype when storage cannot compute (fp8; fp16 on
    a CPU), built with comfy.ops and loaded strictly with the official keys."""
    load_device = mm.get_torch_device()
    parameters = sum(v.numel() for v in unet_state.values())
    supported = VideoModelConfig.supported_inference_dtypes
    if weight_dtype == "auto":
        dtype = mm.unet_dtype(model_params=parameters, supported_dtypes=supported)
    else:
        dtype = WEIGHT_DTYPES[weight_dtype]
    manual_cast = mm.unet_manual_cast(dtype, load_device, supported)
    config = VideoModelConfig({"preset": preset, "compute_dtype": manual_cast})
    config.set_inference_dtype(dtype, manual_cast)
    config.latent_format = VideoLatent(preset.vae.scale_factor)
    offload_device = mm.unet_offload_device()
    model = VideoCrafterBaseModel(preset, schedule, config, device=mm.unet_inital_load_device(parameters, dtype))
    missing, unexpected = model.diffusion_model.load_state_dict(unet_state, strict=False)
    if missing or unexpected:  # the core reader checked the file strictly; this is the conversion's own check
        raise RuntimeError(f"{preset.name}: the native UNet's keys differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def video_base_model(model: ModelPatcher, what: str) -> VideoCrafterBaseModel:
    """The VideoCrafter/LVDM BaseModel of a MODEL, or an error naming the node input."""
    base = getattr(model, "model", None)
    if not isinstance(base, VideoCrafterBaseModel):
        raise ValueError(f"{what}: expected a model from Load VideoCrafter Checkpoint, got {type(base).__name__}")
    return base
