"""The native MODEL under ComfyUI's own samplers, against the core on the same weights.

Every comparison feeds both sides the same weights, inputs and attention function (ComfyUI's
optimized_attention, sub-quadratic on a CPU), so the bounds below are float rounding only.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from comfyui_env import import_pack_in_process

pack = import_pack_in_process()

import comfy.patcher_extension  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import nodes as comfy_nodes  # noqa: E402
from comfy.ldm.modules.attention import optimized_attention  # noqa: E402
from comfy.model_patcher import ModelPatcher  # noqa: E402

from comfyui_echoreel_pack.echoreel_core.echoreel.features import ActionFeatures  # noqa: E402
from comfyui_echoreel_pack.echoreel_core.echoreel.weights import EchoReel, EchoReelConfig  # noqa: E402
from comfyui_echoreel_pack.echoreel_core.models.video_model import VideoModel  # noqa: E402
from comfyui_echoreel_pack.echoreel_core.pipelines.generate import EchoReelGuidance, SamplingSettings, generate_latents  # noqa: E402
from comfyui_echoreel_pack.echoreel_core.models.presets import tiny_preset  # noqa: E402
from comfyui_echoreel_pack.echoreel_core.sampling.ddim import ddim_schedule, sample_ddim  # noqa: E402
from comfyui_echoreel_pack.nodes.echoreel_nodes import ApplyEchoReel  # noqa: E402
from comfyui_echoreel_pack.nodes.model import native_model  # noqa: E402
from comfyui_echoreel_pack.nodes.official_ddim import official_ddim_sampler, official_ddim_sigmas  # noqa: E402

SCALE = 0.18215  # the SD latent scale: the core samples scaled latents, LATENT holds unscaled ones
FAMILIES = ["lvdm-short-t2v", "videocrafter2-t2v-512"]  # no scale_arr, scale_arr


@dataclasses.dataclass
class Tiny:
    core: VideoModel
    native: ModelPatcher
    echoreel: EchoReel
    weights: ModelPatcher
    features: ActionFeatures
    positive: torch.Tensor  # (1, 77, D)
    negative: torch.Tensor


def tiny(name: str, dtype: str = "fp32") -> Tiny:
    """A tiny model with every UNet and EchoReel weight random, the same weights natively and in the core."""
    torch.manual_seed(0)
    core = VideoModel(tiny_preset(name)).eval()
    for p in core.unet.parameters():
        p.data.normal_(0, 0.05)
    core.set_attention(optimized_attention)
    config = EchoReelConfig.for_preset(core.preset, layers=2, latent_dim=32, heads=2, head_dim=16, latent_text_dim=32,
                                       latent_height=4, latent_width=4)
    echoreel = EchoReel(config).eval()
    for p in echoreel.parameters():
        p.data.normal_(0, 0.1)
    echoreel.set_attention(optimized_attention)
    g = torch.Generator().manual_seed(3)
    width = config.prism.tout_dim
    features = ActionFeatures(torch.randn(1, 4, width, generator=g), torch.randn(1, 4, width, generator=g), 4)
    positive, negative = torch.randn(2, 1, 77, core.preset.unet.context_dim, generator=g)
    native = native_model(core.preset, core.schedule, core.unet.state_dict(), dtype)
    weights = ModelPatcher(echoreel, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    return Tiny(core, native, echoreel, weights, features, positive, negative)


def conditioning(tensor: torch.Tensor, **values) -> list:
    return [[tensor, dict(values)]]


def apply(t: Tiny, strength=1.0, start=0.0, end=1.0, model=None) -> ModelPatcher:
    return ApplyEchoReel.execute(model or t.native, t.weights, t.features, strength, start, end).args[0]


def record_unet_calls(model: ModelPatcher) -> list[dict]:
    """Every call of the diffusion model under sampling: its inputs, transformer_options and eps."""
    calls = []

    def wrapper(executor, x, timesteps, context, control, options, fps, image_context, **kwargs):
        out = executor(x, timesteps, context, control, options, fps, image_context, **kwargs)
        calls.append({"x": x.clone(), "t": timesteps.clone(), "context": context.clone(), "fps": fps.clone(),
                      "chunks": list(options["cond_or_uncond"]), "sigma": float(options["sigmas"][0]), "eps": out.clone()})
        return out

    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test", wrapper)
    return calls


def ksample(model, t: Tiny, sampler="ddim", scheduler="ddim_uniform", steps=4, cfg=7.5, batch=1, seed=5, fps=8):
    latent = torch.zeros(batch, 4, 4, 16, 16)
    with torch.no_grad():
        return comfy.sample.sample(
            model, comfy.sample.prepare_noise(latent, seed), steps, cfg, sampler, scheduler,
            conditioning(t.positive, fps=fps), conditioning(t.negative, fps=fps), latent, seed=seed,
        )


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("batch", [1, 2])
def test_patched_eps_under_ksampler_equals_the_core_attached_unet(name, batch):
    """At every call KSampler makes, each chunk's rows (cond or uncond, in the sampler's order) give
    the eps of the core UNet with EchoReel attached and bound to that branch's features."""
    t = tiny(name)
    patched = apply(t, strength=0.8)
    calls = record_unet_calls(patched)
    ksample(patched, t, batch=batch)
    assert len(calls) == 4 and {tuple(c["chunks"]) for c in calls} <= {(0, 1), (1, 0)}
    for call in calls:
        rows = call["x"].shape[0] // len(call["chunks"])
        assert rows == batch
        for i, branch in enumerate(call["chunks"]):
            part = slice(i * rows, (i + 1) * rows)
            tokens = t.features.cond if branch == 0 else t.features.uncond
            with torch.no_grad(), t.echoreel.attach(t.core.preset, t.core.unet, 0.8) as attachment:
                attachment.bind(tokens.expand(rows, -1, -1), 4)
                eps = t.core.unet(call["x"][part], call["t"][part], call["context"][part], fps=call["fps"][part])
            assert (eps - call["eps"][part]).abs().max() <= 1e-6
    # and EchoReel did act: the base model's eps differ
    with torch.no_grad():
        base = t.core.unet(calls[0]["x"], calls[0]["t"], calls[0]["context"], fps=calls[0]["fps"])
    assert (base - calls[0]["eps"]).abs().max() > 1e-3


def test_cfg_one_runs_the_prompt_branch_only():
    t = tiny("lvdm-short-t2v")
    patched = apply(t)
    calls = record_unet_calls(patched)
    ksample(patched, t, cfg=1.0)
    assert [c["chunks"] for c in calls] == [[0]] * 4


@pytest.mark.parametrize("name", FAMILIES)
def test_ksampler_ddim_is_the_official_deterministic_ddim_up_to_its_start_and_last_step(name):
    """KSampler's `ddim` (Euler) on `ddim_uniform` is the official DDIM with eta 0, step for step, with
    two differences it has by design: it starts from sigma * noise, i.e. x_T = sqrt(1 - abar_T) * noise
    (the official x_T is the noise itself), and its last step lands on the predicted x0 (the official
    one steps to abar[0]). Given that start, its output is the official run's last predicted x0."""
    t = tiny(name)
    steps = 4
    ks = ksample(t.native, t, steps=steps)
    noise = comfy.sample.prepare_noise(torch.zeros(1, 4, 4, 16, 16), 5)
    schedule = ddim_schedule(t.core.schedule, steps, eta=0.0)
    abar_T = schedule[0].alpha
    context = torch.cat([t.positive, t.negative])
    fps = torch.full((2,), 8)

    def denoise(x, timesteps):
        with torch.no_grad():
            cond, uncond = t.core.unet(torch.cat([x, x]), torch.cat([timesteps, timesteps]), context, fps=fps).chunk(2)
        return uncond + 7.5 * (cond - uncond)

    x0s = []
    sample_ddim(denoise, (1 - abar_T).sqrt() * noise, schedule, torch.Generator().manual_seed(0),
                callback=lambda i, x, x0: x0s.append(x0))
    scale = x0s[-1].abs().max()
    assert (ks * SCALE - x0s[-1]).abs().max() <= 2e-5 * scale


@pytest.mark.parametrize("name", FAMILIES)
def test_official_ddim_sampler_reproduces_the_core_official_sampler(name):
    """The official DDIM as a ComfyUI SAMPLER, with EchoReel as a patch, against the core's own run
    (EchoReel attached): equal up to float rounding (CFG applied to x0 and eps recovered from it)."""
    t = tiny(name)
    patched = apply(t, strength=1.0, start=0.1, end=0.9)
    steps, seed = 5, 11
    latent = torch.zeros(1, 4, 4, 16, 16)
    sigmas = official_ddim_sigmas(patched.get_model_object("model_sampling"), steps)
    with torch.no_grad():
        out = comfy.sample.sample_custom(patched, comfy.sample.prepare_noise(latent, seed), 7.5, official_ddim_sampler(1.0),
                                         sigmas, conditioning(t.positive, fps=8), conditioning(t.negative, fps=8), latent,
                                         seed=seed)
    settings = SamplingSettings(height=32, width=32, frames=4, fps=8, steps=steps, cfg=7.5, eta=1.0, seed=seed)
    guide = EchoReelGuidance(t.echoreel, t.features, 1.0, 0.1, 0.9)
    ref = generate_latents(t.core, t.positive, t.negative, settings, echoreel=guide)
    assert (out * SCALE - ref).abs().max() <= 2e-5 * ref.abs().max()
    base = generate_latents(t.core, t.positive, t.negative, settings)
    assert (base - ref).abs().max() > 1e-3  # EchoReel acted


def test_start_and_end_percent_act_on_the_samplers_sigmas():
    """EchoReel runs exactly at the steps whose sigma lies in [percent_to_sigma(end), percent_to_sigma(start)],
    on a schedule (karras) whose steps are not the DDIM grid."""
    t = tiny("videocrafter2-t2v-512")
    sampling = t.native.get_model_object("model_sampling")
    patched = apply(t, start=0.3, end=0.7)
    calls = record_unet_calls(patched)
    ran = []
    handle = t.echoreel.integration[0].register_forward_hook(lambda *args: ran.append(True))
    try:
        ksample(patched, t, sampler="euler", scheduler="karras", steps=8)
    finally:
        handle.remove()
    low, high = sampling.percent_to_sigma(0.7), sampling.percent_to_sigma(0.3)
    inside = [c["sigma"] for c in calls if low <= c["sigma"] <= high]
    assert 0 < len(inside) < len(calls)
    assert len(ran) == len(inside)


def test_a_second_apply_is_refused_and_the_input_model_stays_unpatched():
    t = tiny("lvdm-short-t2v")
    once = apply(t)
    with pytest.raises(ValueError, match="already has EchoReel applied"):
        apply(t, model=once)
    assert not t.native.model_options["transformer_options"].get("patches")
    assert torch.equal(ksample(t.native, t), ksample(t.native, t))


def test_echoreel_composes_with_a_weight_patch():
    """A LoRA-style weight patch (ModelPatcher.add_patches) after Apply EchoReel: the sampled eps are
    the core UNet's with the patched weight and EchoReel attached."""
    t = tiny("lvdm-short-t2v")
    key = "diffusion_model.out.2.weight"
    diff = torch.randn_like(t.native.model.state_dict()[key]) * 0.05
    patched = apply(t)
    patched.add_patches({key: (diff,)}, 1.0)
    calls = record_unet_calls(patched)
    ksample(patched, t, steps=2)
    t.core.unet.out[2].weight.data += diff
    call = calls[0]
    rows = call["x"].shape[0] // 2
    for i, branch in enumerate(call["chunks"]):
        part = slice(i * rows, (i + 1) * rows)
        tokens = t.features.cond if branch == 0 else t.features.uncond
        with torch.no_grad(), t.echoreel.attach(t.core.preset, t.core.unet) as attachment:
            attachment.bind(tokens, 4)
            eps = t.core.unet(call["x"][part], call["t"][part], call["context"][part], fps=call["fps"][part])
        assert (eps - call["eps"][part]).abs().max() <= 1e-6


STORAGE_BOUNDS = {  # relative L2 error of the sampled latents against fp32 storage: about 5x the measured
    # (tiny VideoCrafter2 / LVDM, 4 DDIM steps: fp16 2.7e-5 / 1.7e-5, bf16 1.3e-4 / 1.2e-4,
    # fp8_e4m3fn 1.8e-3 / 1.3e-3, fp8_e5m2 4.0e-3 / 3.3e-3)
    "fp16": (torch.float16, 2e-4), "bf16": (torch.bfloat16, 1e-3),
    "fp8_e4m3fn": (torch.float8_e4m3fn, 1e-2), "fp8_e5m2": (torch.float8_e5m2, 2e-2),
}


def storage_errors(name: str = "videocrafter2-t2v-512") -> dict[str, float]:
    t32 = tiny(name)
    reference = ksample(t32.native, t32)
    errors = {}
    for storage, (dtype, _) in STORAGE_BOUNDS.items():
        low = tiny(name, storage)
        assert {p.dtype for p in low.native.model.diffusion_model.parameters()} == {dtype}
        result = ksample(low.native, low)
        assert torch.isfinite(result).all()
        errors[storage] = ((result - reference).norm() / reference.norm()).item()
    return errors


def test_weights_stored_in_fp8_or_half_run_on_cpu_close_to_fp32():
    """Storage in fp8/fp16/bf16 computes in float32 on a CPU (comfy.ops manual cast): the sampled
    latents stay close to fp32's (the weights' rounding only)."""
    errors = storage_errors()
    for storage, (_, bound) in STORAGE_BOUNDS.items():
        assert 0 < errors[storage] <= bound, (storage, errors)


def test_fps_conditioning_reaches_the_unet():
    t = tiny("videocrafter2-t2v-512")
    assert not torch.equal(ksample(t.native, t, fps=8), ksample(t.native, t, fps=24))
    calls = record_unet_calls(t.native)
    ksample(t.native, t, fps=24)
    assert (calls[0]["fps"] == 24).all()
    # CLIPTextEncode's conditioning has no fps: the preset's default is used, on both branches alike
    calls.clear()
    latent = torch.zeros(1, 4, 4, 16, 16)
    with torch.no_grad():
        comfy.sample.sample(t.native, comfy.sample.prepare_noise(latent, 0), 1, 7.5, "euler", "normal",
                            conditioning(t.positive), conditioning(t.negative), latent)
    assert (calls[0]["fps"] == t.core.preset.fps).all() and len(calls[0]["chunks"]) == 2


def test_every_weight_can_be_loaded_partially_in_low_vram(tmp_path):
    """ComfyUI's partial loader moves only modules whose parameters are all their own (a module with
    direct parameters and parameter-holding children is skipped, its weights left behind), and casts
    at use only in comfy.ops layers: so every parameter of the UNet and of the EchoReel weights sits
    in a comfy.ops layer or in a leaf that casts its raw parameters where they are used. Loaded with a
    tiny budget (most layers left to cast and move per call), the eps is the fully loaded one."""
    import comfy.ops

    from comfyui_echoreel_pack.echoreel_core.echoreel.weights import load_echoreel, save_echoreel

    t = tiny("videocrafter2-t2v-512")
    save_echoreel(t.echoreel, tmp_path / "e.safetensors")
    weights = load_echoreel(tmp_path / "e.safetensors", operations=comfy.ops.manual_cast, attention=optimized_attention)
    for root in (t.native.model.diffusion_model, weights):
        for name, module in root.named_modules():
            own = dict(module.named_parameters(recurse=False))
            if own:
                assert len(own) == len(list(module.parameters())), f"{name} holds parameters and parameter-holding children"
                assert hasattr(module, "comfy_cast_weights") or type(module).__name__ in ("ParameterLeaf", "RelativePosition"), name
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 4, 4, 16, 16, generator=g), torch.cat([t.positive, t.negative])
    timesteps, fps = torch.tensor([500.0, 500.0]), torch.tensor([8, 8])
    patched = ApplyEchoReel.execute(t.native, ModelPatcher(weights, torch.device("cpu"), torch.device("cpu")),
                                    t.features, 1.0, 0.0, 1.0).args[0]
    options = dict(patched.model_options["transformer_options"], cond_or_uncond=[0, 1], sigmas=torch.tensor([1.0]))
    unet = patched.model.diffusion_model
    with torch.no_grad():
        full = unet(x, timesteps, context, transformer_options=options, fps=fps)
        patched.load(torch.device("cpu"), lowvram_model_memory=64 * 1024, full_load=False)
        cast = [m for m in unet.modules() if getattr(m, "comfy_cast_weights", False)]
        partial = unet(x, timesteps, context, transformer_options=options, fps=fps)
        patched.unpatch_model(torch.device("cpu"))
    assert len(cast) > 10  # most layers were left to be cast and moved per call
    assert torch.equal(partial, full)
