"""The models take an operations namespace, a storage dtype and an attention callable
(echoreel_core/models/ops.py), as ComfyUI's own model files do: every weight comes from the
namespace, construction never touches a weight, fp8 storage computes in the input's dtype, and the
attention callable is the model's own. The ComfyUI test runs the real comfy.ops (0.3.75) on CPU.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from tiny import tiny_model

from echoreel_core.models.attention import sdpa_attention
from echoreel_core.loading.checkpoints import load_video_model, save_video_model
from echoreel_core.echoreel.features import Reference, prism_tokens
from echoreel_core.echoreel.weights import EchoReel, EchoReelConfig
from echoreel_core.models.layers import Attention, RelativePosition
from echoreel_core.models.ops import ParameterLeaf, compute_dtype, set_attention
from echoreel_core.models.video_model import VideoModel
from echoreel_core.models.presets import PRESETS, tiny_preset
from echoreel_core.toy.models import TOY_MODEL_FILE, shipped

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = ("Linear", "Conv1d", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm", "Embedding")
PLAIN = tuple(getattr(nn, name) for name in LAYERS)
# the two leaf modules of raw parameters the core has (cast to the activation where they are used)
LEAVES = (ParameterLeaf, RelativePosition)
# fp8 (e4m3fn: 3 mantissa bits) storage against fp32, same weights and inputs, measured as
# max |fp8 - fp32| / max |fp32| and ||fp8 - fp32|| / ||fp32|| over the output:
# - the shipped toy UNet (trained weights), 4 inputs: 0.024-0.030 and 0.028;
# - tiny random UNets of the five families, 5 seeds: 0.031-0.102 and 0.019-0.095 (random N(0, 0.05)
#   weights sit largely in fp8's subnormal range, where its relative step is coarser).
# Computing with the fp8-rounded weights in fp32 gives the fp8 model's output bit for bit.
FP8_TOY = 0.05  # both measures, trained weights
FP8_TINY = 0.15  # both measures, random weights


def namespace(name: str, mixin: type) -> type:
    """A comfy.ops-like namespace: a class whose members subclass torch.nn's layers with `mixin`."""
    return type(name, (), {layer: type(layer, (mixin, getattr(nn, layer)), {}) for layer in LAYERS})


# ---- a namespace that records every layer it makes ---------------------------------------------------

class Recorded:
    made: list[nn.Module] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        Recorded.made.append(self)


RecordingOps = namespace("RecordingOps", Recorded)


def tiny_echoreel(model: VideoModel, **build) -> EchoReel:
    config = EchoReelConfig.for_preset(model.preset, layers=2, latent_dim=32, heads=2, head_dim=16,
                                       latent_text_dim=32, latent_height=4, latent_width=4)
    return EchoReel(dataclasses.replace(config, query_positions=True), **build)


def every_model(**build) -> list[nn.Module]:
    """Every model the core has, tiny, one of each family, built with `build`."""
    models = []
    for name in sorted(PRESETS):
        model = VideoModel(tiny_preset(name), **build)
        models += [model, tiny_echoreel(model, **build)]
    return models


def test_every_weight_comes_from_the_namespace_or_a_leaf_of_raw_parameters():
    Recorded.made.clear()
    models = every_model(operations=RecordingOps)
    made = set(map(id, Recorded.made))
    in_models = set()
    for model in models:
        for name, module in model.named_modules():
            own = [n for n, p in module.named_parameters(recurse=False) if p is not None]
            if isinstance(module, PLAIN):
                assert isinstance(module, Recorded), f"{type(module).__name__} at {name} is not from the namespace"
                in_models.add(id(module))
            elif own:  # raw parameters: only in the leaves made for them
                assert isinstance(module, LEAVES), f"raw parameters {own} in {type(module).__name__} at {name}"
                assert not list(module.children()), f"{name} holds raw parameters and children"
    assert in_models == made  # and every layer the namespace made is in a model
    # the float32 GroupNorms are built on the namespace's GroupNorm too
    norms = [m for m in models[0].unet.modules() if type(m).__name__ == "GroupNorm32"]
    assert norms and all(isinstance(m, RecordingOps.GroupNorm) for m in norms)
    Recorded.made.clear()


def test_state_dict_keys_stay_the_official_ones():
    """Raw parameters moved into leaves (`raw`, `in_proj`) keep their official keys, in order."""
    model = VideoModel(tiny_preset("videocrafter1-i2v-512"))
    text = list(model.text_encoder.state_dict())
    assert text[:4] == ["positional_embedding", "text_projection", "logit_scale", "token_embedding.weight"]
    assert text[5:9] == [f"transformer.resblocks.0.{k}" for k in ("ln_1.bias", "attn.in_proj_weight",
                                                                   "attn.in_proj_bias", "attn.out_proj.weight")]
    vision = list(model.image_encoder.state_dict())
    assert vision[:4] == ["class_embedding", "positional_embedding", "proj", "conv1.weight"]
    assert list(model.resampler.state_dict())[0] == "latents"
    again = VideoModel(tiny_preset("videocrafter1-i2v-512"))
    for part in ("text_encoder", "image_encoder", "resampler"):
        getattr(again, part).load_state_dict(getattr(model, part).state_dict(), strict=True)
        for key, value in getattr(model, part).state_dict().items():
            assert torch.equal(getattr(again, part).state_dict()[key], value), key
    assert again.text_encoder.positional_embedding is again.text_encoder.raw.positional_embedding  # official name


def test_initialize_weights_gives_the_default_path_its_weights():
    """Built with a namespace the constructor initialises nothing of its own; initialize_weights()
    then gives, from the same seed, exactly the weights the core's default path gives (whose zero
    output projections make an untrained EchoReel the base model)."""
    torch.manual_seed(0)
    default = VideoModel(tiny_preset("lvdm-short-t2v"))
    echoreel = tiny_echoreel(default)
    after_default = torch.rand(4)
    model = VideoModel(tiny_preset("lvdm-short-t2v"), operations=RecordingOps)
    built = tiny_echoreel(model, operations=RecordingOps)
    assert not all(bool((layer.to_out[0].weight == 0).all()) for layer in
                   (i.video_inject_attn3_tmp for i in built.integration))  # not zeroed: left for a state dict
    torch.manual_seed(0)
    model.initialize_weights()
    built.initialize_weights()
    assert torch.equal(torch.rand(4), after_default)  # the same draws, in the same order
    for ours, theirs in ((model, default), (built, echoreel)):
        for key, value in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[key], value), key
    assert all(bool((i.video_inject_attn3_tmp.to_out[0].weight == 0).all()) for i in built.integration)


# ---- construction never touches a weight (ComfyUI 0.33's DynamicVRAM) --------------------------------

class NoWeightUntilLoaded:
    """As DynamicVRAM's layers: Linear, Conv and norms hold None, Embedding a meta tensor, until
    their state dict is loaded."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "device": "meta"})
        self.lazy = [name for name, p in self._parameters.items() if p is not None]
        if not isinstance(self, nn.Embedding):
            for name in self.lazy:
                self._parameters[name] = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        for name in self.lazy:
            if prefix + name in state_dict:
                self._parameters[name] = nn.Parameter(state_dict[prefix + name].clone(), requires_grad=False)
            else:
                missing.append(prefix + name)


LazyOps = namespace("LazyOps", NoWeightUntilLoaded)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_construction_never_touches_a_weight_then_loads(name, tmp_path):
    model = VideoModel(tiny_preset(name), operations=LazyOps).eval()  # raises if a constructor touched a weight
    echoreel = tiny_echoreel(model, operations=LazyOps).eval()
    embedding = next(m for m in model.text_encoder.modules() if isinstance(m, nn.Embedding))
    assert model.unet.time_embed[0].weight is None and embedding.weight.is_meta
    reference = tiny_model(name)
    trained = tiny_echoreel(reference).eval()
    for p in trained.parameters():
        p.data.normal_(0, 0.1)
    for part in ("unet", "vae", "text_encoder") + (("image_encoder", "resampler") if reference.preset.is_i2v else ()):
        getattr(model, part).load_state_dict(getattr(reference, part).state_dict(), strict=True)
    echoreel.load_state_dict(trained.state_dict(), strict=True)
    # the core's own loader too: it checks keys against the official layout, not the unloaded layers
    loaded = load_video_model(save_video_model(reference, tmp_path / "m.safetensors"), operations=LazyOps)
    assert isinstance(loaded.unet.time_embed[0], LazyOps.Linear)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 4, 8, 8, generator=g)
    t = torch.tensor([501])
    context = torch.randn(1, 77 + 16 * reference.preset.is_i2v, reference.preset.unet.context_dim, generator=g)
    ref = Reference(torch.randn(1, 4, 4, 4, 4, generator=g),
                    torch.randn(1, 77, reference.preset.unet.context_dim, generator=g))
    with torch.no_grad():
        want = reference.unet(x, t, context, fps=8)
        assert torch.equal(model.unet(x, t, context, fps=8), want)
        assert torch.equal(loaded.unet(x, t, context, fps=8), want)
        tokens = prism_tokens(trained, context[:, :77], [ref])
        assert torch.equal(prism_tokens(echoreel, context[:, :77], [ref]), tokens)
        with trained.attach(reference.preset, reference.unet) as attachment:
            attachment.bind(tokens, 4)
            want = reference.unet(x, t, context, fps=8)
        with echoreel.attach(model.preset, model.unet) as attachment:
            attachment.bind(tokens, 4)
            assert torch.equal(model.unet(x, t, context, fps=8), want)


# ---- fp8 storage, computed in the input's dtype ----------------------------------------------------

class CastToInput:
    """A manual-cast layer: weight and bias stored in any dtype, cast to the input's at every call
    (what comfy.ops.manual_cast does). No initialisation of its own (fp8 has no random fill)."""

    def reset_parameters(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = (None if p is None else p.to(x.device, x.dtype if x.is_floating_point() else None)
                        for p in (self.weight, getattr(self, "bias", None)))
        if isinstance(self, nn.Linear):
            return F.linear(x, weight, bias)
        if isinstance(self, nn.modules.conv._ConvNd):
            return self._conv_forward(x, weight, bias)
        if isinstance(self, nn.GroupNorm):
            return F.group_norm(x, self.num_groups, weight, bias, self.eps)
        if isinstance(self, nn.LayerNorm):
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)
        return F.embedding(x, weight)


ManualCastOps = namespace("ManualCastOps", CastToInput)


def fp8_errors(model: VideoModel, operations, x: torch.Tensor, context: torch.Tensor) -> tuple[float, float]:
    """The UNet stored in fp8 through `operations` against fp32 (fp32 input): the max and the RMS
    error, each relative to the fp32 output. Asserts on the way that the fp8 UNet computes in fp32
    and gives exactly the output of the fp32 UNet with its weights rounded to fp8."""
    cls, config, state = type(model.unet), model.preset.unet, model.unet.state_dict()
    unet = cls(config, dtype=torch.float8_e4m3fn, operations=operations).eval()
    unet.load_state_dict(state)  # rounded to fp8 on the copy
    assert {p.dtype for p in unet.parameters()} == {torch.float8_e4m3fn}
    assert compute_dtype(unet, x) == torch.float32 and compute_dtype(unet) == torch.float32
    rounded = cls(config).eval()
    rounded.load_state_dict({k: v.to(torch.float8_e4m3fn).float() for k, v in state.items()})
    t = torch.tensor([981, 301][: x.shape[0]])
    with torch.no_grad():
        want = model.unet(x, t, context, fps=8)
        got = unet(x, t, context, fps=8)
        assert torch.equal(got, rounded(x, t, context, fps=8))
    assert got.dtype == torch.float32
    error = got - want
    return float(error.abs().max() / want.abs().max()), float(error.norm() / want.norm())


def tiny_inputs(model: VideoModel) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 4, 8, 8, generator=g)
    return x, torch.randn(2, 77 + 16 * model.preset.is_i2v, model.preset.unet.context_dim, generator=g)


@pytest.fixture(scope="module")
def toy():
    model = load_video_model(shipped(TOY_MODEL_FILE)).eval()
    x = torch.randn(2, 4, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    return model, x, model.encode_text(["a red circle moving left", ""])


def test_fp8_storage_runs_on_cpu_within_tolerance_of_fp32(toy):
    errors = fp8_errors(*toy[:1], ManualCastOps, *toy[1:])
    assert max(errors) < FP8_TOY and min(errors) > 1e-3, errors  # the weights really were rounded


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_fp8_storage_of_every_family(name):
    model = tiny_model(name)
    errors = fp8_errors(model, ManualCastOps, *tiny_inputs(model))
    assert max(errors) < FP8_TINY, errors


def test_explicit_compute_dtype_overrides_the_stored_one():
    model = tiny_model("videocrafter2-t2v-512")
    x = torch.randn(1, 4, 2, 8, 8)
    assert compute_dtype(model.unet, x) == torch.float32 and model.dtype == torch.float32
    model.unet.to(torch.bfloat16)
    assert compute_dtype(model.unet, x) == torch.bfloat16  # torch.nn layers compute in their own dtype
    model.unet.compute_dtype = torch.float32  # as a host whose layers cast (comfy.ops.manual_cast) sets it
    assert model.dtype == torch.float32


# ---- the attention callable is the model's own -----------------------------------------------------

def test_attention_callable_is_used_per_model_and_defaults_to_sdpa():
    calls = []

    def counting(q, k, v, heads):
        calls.append(q.shape)
        return sdpa_attention(q, k, v, heads)

    for name in ("lvdm-short-t2v", "videocrafter1-i2v-512"):
        default = tiny_model(name)
        assert {m.attention_fn for m in default.modules() if hasattr(m, "attention_fn")} == {sdpa_attention}
        torch.manual_seed(0)
        counted = VideoModel(tiny_preset(name), attention=counting).eval()
        counted.load_state_dict(default.state_dict())
        other = tiny_model(name)  # another model keeps SDPA: nothing global was swapped
        x, t = torch.randn(1, 4, 4, 8, 8), torch.tensor([501])
        context = torch.randn(1, 77 + 16 * default.preset.is_i2v, default.preset.unet.context_dim)
        calls.clear()
        with torch.no_grad():
            want = default.unet(x, t, context, fps=8)
            assert not calls
            assert torch.equal(counted.unet(x, t, context, fps=8), want)  # the default equals SDPA
            # one call per softmax attention run, two for the I2V text+image one; the relative-position
            # (temporal) attentions of LVDM stay on their explicit path
            expected = sum(1 + m.image_tokens for m in counted.unet.modules()
                           if isinstance(m, Attention) and not m.relative)
            assert len(calls) == expected > 0
            other.unet(x, t, context, fps=8)
            assert len(calls) == expected
            calls.clear()
            counted.vae.decode_frames(torch.randn(1, 4, 4, 4))  # the autoencoder's mid attention
            assert len(calls) == 1
            if default.preset.is_i2v:
                calls.clear()
                counted.encode_image(None)  # the vision tower: one per block
                assert len(calls) == default.preset.vision.layers
        set_attention(counted, None)
        assert {m.attention_fn for m in counted.modules() if hasattr(m, "attention_fn")} == {sdpa_attention}


# ---- ComfyUI's own comfy.ops and optimized_attention ------------------------------------------------

@pytest.fixture(scope="module")
def comfy():
    """comfy.ops and optimized_attention of the test-only ComfyUI (as tests/comfyui_env.py sets it up)."""
    comfyui = pathlib.Path(os.environ.get("ECHOREEL_COMFYUI_DIR", ROOT / ".comfyui" / "ComfyUI"))
    if not (comfyui / "main.py").is_file():
        raise RuntimeError(f"{comfyui} is missing: run `bash scripts/setup_comfyui.sh` (scripts/test.sh does)")
    for path in (str(comfyui), str(ROOT / "tests" / "comfyui_stubs")):
        if path not in sys.path:
            sys.path.insert(0, path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management reads it, as `main.py --cpu` does
    import comfy.ops
    from comfy.ldm.modules.attention import optimized_attention

    return comfy.ops, optimized_attention


@pytest.mark.parametrize("name", ["lvdm-short-t2v", "videocrafter2-t2v-512", "videocrafter1-i2v-512"])
def test_comfy_ops_fp8_manual_cast_and_optimized_attention(comfy, toy, name):
    ops, optimized_attention = comfy
    if name == "videocrafter2-t2v-512":
        assert max(fp8_errors(*toy[:1], ops.manual_cast, *toy[1:])) < FP8_TOY
    model = tiny_model(name)
    assert max(fp8_errors(model, ops.manual_cast, *tiny_inputs(model))) < FP8_TINY
    # disable_weight_init in fp32 (what ComfyUI picks when storage and compute dtypes agree) is the
    # core's model exactly, its float32 GroupNorms included; optimized_attention (sub-quadratic on
    # --cpu) is SDPA to float rounding
    reference = tiny_model(name)
    model = VideoModel(reference.preset, operations=ops.disable_weight_init).eval()
    model.load_state_dict(reference.state_dict())
    x, t = torch.randn(1, 4, 4, 8, 8), torch.tensor([501])
    context = torch.randn(1, 77 + 16 * reference.preset.is_i2v, reference.preset.unet.context_dim)
    with torch.no_grad():
        want = reference.unet(x, t, context, fps=8)
        assert torch.equal(model.unet(x, t, context, fps=8), want)
        model.set_attention(optimized_attention)
        torch.testing.assert_close(model.unet(x, t, context, fps=8), want, atol=1e-5, rtol=1e-4)
        video = torch.rand(1, 3, 2, 16, 16) * 2 - 1
        torch.testing.assert_close(model.vae.decode_video(model.vae.encode_video(video, sample=False)),
                                   reference.vae.decode_video(reference.vae.encode_video(video, sample=False)),
                                   atol=1e-5, rtol=1e-4)
