"""A native ComfyUI CLIP built from the text encoder of a loaded video model.

`native_clip(model)` gives the `comfy.sd.CLIP` that ComfyUI's own checkpoint loaders would make
from the same weights, so CLIP Text Encode, CLIP Set Last Layer, prompt weighting, embeddings
and hooks work with it:

- OpenCLIP text towers (VideoCrafter families, the toy): the weights take ComfyUI's SD2 keys
  (`clip_h.transformer.text_model...`) through ComfyUI's own `clip_text_transformers_convert`;
  the full-size ViT-H/14 tower (penultimate layer, then the final norm, pad 0) gets
  `SD2ClipModel`/`SD2Tokenizer`, exactly as an SD2 checkpoint does.
- CLIP ViT-L/14 (LVDM, HF layout, last layer, EOT-padded): ComfyUI's SD1 keys (`clip_l.`),
  `SD1ClipModel`/`SD1Tokenizer`.
- Any other size (tiny test presets, the toy model): the same ComfyUI classes sized by a dict
  config of the tower's width, layers, heads and activation, reading the tower's own layer
  (penultimate or last, always through the final norm) and padding with its own pad token.

The weights are copied, in the dtype ComfyUI chooses for text encoders (float32 on the CPU),
and loaded strictly: a key that the conversion leaves unmatched raises instead of leaving a
layer at its uninitialised values. The CLIP's ModelPatcher loads to `text_encoder_device()` and
offloads to `text_encoder_offload_device()`, as ComfyUI's own text encoders do.
"""

from __future__ import annotations

import functools
import inspect

import comfy.model_management as mm
import comfy.sd
import comfy.sd1_clip as sd1_clip
import comfy.utils
import folder_paths
import torch
from comfy.cli_args import args
from comfy.supported_models_base import ClipTarget
from comfy.text_encoders import sd2_clip

from ..echoreel_core.models.text_encoders import (
    CLIPTextConfig, CLIPTextEncoder, OpenCLIPTextConfig, OpenCLIPTextEncoder,
)

START_TOKEN, END_TOKEN = 49406, 49407
# ComfyUI flags that choose the text encoders' dtype; without one, the CPU gets float32
_TEXT_ENCODER_DTYPE_FLAGS = (
    "fp8_e4m3fn_text_enc", "fp8_e5m2_text_enc", "fp16_text_enc", "bf16_text_enc", "fp32_text_enc",
)


def native_clip(model) -> comfy.sd.CLIP:
    """ComfyUI's CLIP for `model.text_encoder` (an echoreel_core VideoModel's OpenCLIP or CLIP-L tower)."""
    return _build_clip(model.text_encoder)


def _build_clip(text_encoder, disable_dynamic: bool = False) -> comfy.sd.CLIP:
    config = text_encoder.config
    target, prefix = clip_target(config)
    load_device = mm.text_encoder_device()
    dtype = text_encoder_dtype(load_device)
    state = clip_state_dict(text_encoder, prefix, dtype)

    kwargs = dict(
        embedding_directory=folder_paths.get_folder_paths("embeddings"),
        tokenizer_data=state,
        parameters=comfy.utils.calculate_parameters(state),
        model_options={"dtype": dtype},
    )
    accepted = inspect.signature(comfy.sd.CLIP.__init__).parameters
    if "disable_dynamic" in accepted:
        kwargs["disable_dynamic"] = disable_dynamic
    if "state_dict" in accepted:  # newer ComfyUI loads inside the constructor (and may assign)
        clip = comfy.sd.CLIP(target, state_dict=state, **kwargs)
    else:
        clip = comfy.sd.CLIP(target, **kwargs)
        clip.load_sd(state, full_model=True)
    _check_keys(clip, state, prefix)
    if hasattr(clip.patcher, "cached_patcher_init"):  # newer ComfyUI rebuilds patchers through it
        clip.patcher.cached_patcher_init = (_clip_patcher, (text_encoder,))
    return clip


def _clip_patcher(text_encoder, disable_dynamic: bool = False):
    """A fresh CLIP patcher over the same weights (newer ComfyUI's `cached_patcher_init` factory)."""
    return _build_clip(text_encoder, disable_dynamic).patcher


def text_encoder_dtype(load_device) -> torch.dtype:
    """ComfyUI's choice for text-encoder weights, but float32 on a CPU unless a flag asks otherwise
    (ComfyUI would store them in float16 there and compute in float32)."""
    if mm.is_device_cpu(load_device) and not any(getattr(args, flag, False) for flag in _TEXT_ENCODER_DTYPE_FLAGS):
        return torch.float32
    return mm.text_encoder_dtype(load_device)


def clip_target(config: OpenCLIPTextConfig | CLIPTextConfig) -> tuple[ClipTarget, str]:
    """ComfyUI's ClipTarget for a text-tower config, and the key prefix its weights take."""
    if config == OpenCLIPTextConfig():  # VideoCrafter's ViT-H/14: what SD2 checkpoints get
        return ClipTarget(sd2_clip.SD2Tokenizer, sd2_clip.SD2ClipModel), "clip_h."
    if config == CLIPTextConfig():  # LVDM's ViT-L/14: what SD1 checkpoints get
        return ClipTarget(sd1_clip.SD1Tokenizer, sd1_clip.SD1ClipModel), "clip_l."

    openclip = isinstance(config, OpenCLIPTextConfig)
    name = "h" if openclip else "l"
    if openclip:
        skip = config.skip_last_layers
        intermediate, activation, projection = int(config.width * config.mlp_ratio), "gelu", config.embed_dim
    else:
        skip, intermediate, activation, projection = 0, config.intermediate, "quick_gelu", config.width
    if not 0 <= skip < config.layers:
        raise ValueError(f"a text tower of {config.layers} layers cannot skip its last {skip}")
    layer, layer_idx = "last", None
    if skip:  # the output after block layers-1-skip, through the final norm (ComfyUI's "hidden")
        layer, layer_idx = "hidden", -(skip + 1) if skip + 1 < config.layers else config.layers - 1 - skip
    target = ClipTarget(
        functools.partial(_Tokenizer, clip_name=name, max_length=config.context_length, pad_token=config.pad_token,
                          embedding_size=config.width),
        _ClipModel,
    )
    target.params = {
        "clip_name": name,
        "textmodel_json_config": {
            "num_hidden_layers": config.layers, "hidden_size": config.width, "num_attention_heads": config.heads,
            "intermediate_size": intermediate, "hidden_act": activation,
            "max_position_embeddings": config.context_length, "vocab_size": config.vocab_size,
            "eos_token_id": END_TOKEN, "projection_dim": projection,
        },
        "layer": layer,
        "layer_idx": layer_idx,
        "special_tokens": {"start": START_TOKEN, "end": END_TOKEN, "pad": config.pad_token},
        "max_length": config.context_length,
        "return_projected_pooled": openclip,  # as SD2 (projected) and SD1 (unprojected) do
    }
    return target, f"clip_{name}."


def clip_state_dict(text_encoder, prefix: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tower's weights under ComfyUI's keys, copied to the CPU in `dtype` (logit_scale stays
    float32, as ComfyUI's own parameter is)."""
    state = {
        prefix + k: v.detach().to("cpu", dtype=torch.float32 if k == "logit_scale" else dtype, copy=True)
        for k, v in text_encoder.state_dict().items()
    }
    if isinstance(text_encoder, OpenCLIPTextEncoder):
        return comfy.utils.clip_text_transformers_convert(state, prefix, prefix + "transformer.")
    if isinstance(text_encoder, CLIPTextEncoder):
        state = {prefix + "transformer.text_model." + k[len(prefix):]: v for k, v in state.items()}
        # HF's CLIPTextModel has no projection, and ComfyUI leaves SD1's uninitialised (SD1's pooled
        # output is unprojected): identity keeps the projected pooled output equal and every weight set
        width = text_encoder.config.width
        state[prefix + "transformer.text_projection.weight"] = torch.eye(width, dtype=dtype)
        return state
    raise TypeError(f"not a text encoder of echoreel_core: {type(text_encoder).__name__}")


def _check_keys(clip: comfy.sd.CLIP, state: dict[str, torch.Tensor], prefix: str) -> None:
    """Every weight of ComfyUI's model is set by the converted state dict and nothing is left over
    (ComfyUI itself only logs these); logit_scale alone may be absent."""
    expected = set(clip.cond_stage_model.state_dict())
    missing = sorted(expected - set(state) - {prefix + "logit_scale"})
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"the text encoder's weights do not convert to ComfyUI's CLIP: missing {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}")


class _TextModel(sd1_clip.SDClipModel):
    """ComfyUI's CLIP text model sized by a dict config, with a text projection to `projection_dim`
    (ComfyUI's is square, which only the full-size towers are)."""

    def __init__(self, device="cpu", dtype=None, model_options={}, textmodel_json_config=None, **kwargs):
        config = dict(textmodel_json_config)  # ComfyUI writes per-model overrides into it
        super().__init__(device=device, dtype=dtype, model_options=model_options, textmodel_json_config=config,
                         **kwargs)
        width, projection = config["hidden_size"], config["projection_dim"]
        if projection != width:
            self.transformer.text_projection = self.operations.Linear(width, projection, bias=False, dtype=dtype,
                                                                      device=device)
            self.freeze()


class _ClipModel(sd1_clip.SD1ClipModel):
    def __init__(self, device="cpu", dtype=None, model_options={}, clip_name="h", **kwargs):
        super().__init__(device=device, dtype=dtype, model_options=model_options, clip_name=clip_name,
                         clip_model=_TextModel, **kwargs)


class _Tokenizer(sd1_clip.SD1Tokenizer):
    """ComfyUI's CLIP tokenizer padding with the tower's own pad token (0: OpenCLIP, EOT: HF)."""

    def __init__(self, embedding_directory=None, tokenizer_data={}, clip_name="h", max_length=77, pad_token=0,
                 embedding_size=768):
        tokenizer = functools.partial(
            sd1_clip.SDTokenizer, max_length=max_length, pad_with_end=pad_token == END_TOKEN, pad_token=pad_token,
            embedding_size=embedding_size, embedding_key=f"clip_{clip_name}",
        )
        super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data, clip_name=clip_name,
                         tokenizer=tokenizer)
