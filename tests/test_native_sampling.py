"""The core's DPM++ 2M on the karras schedule is ComfyUI's KSampler `dpmpp_2m` / `karras` on the native MODEL.

This is what lets the core (toy.evaluate --sampler dpmpp_2m) measure motion transfer "through
KSampler": ComfyUI's own KSampler node and the core's generate_latents get the same weights, the
same text contexts, the same seed (prepare_noise is the core's seeded CPU draw) and, with EchoReel,
the same weights and features (Apply EchoReel to Model against the core's attachment). Both sides
run ComfyUI's optimized_attention, so what remains is float rounding: CFG applied to x0 by ComfyUI
and to eps by the core (about 2e-7 of the latents' scale per step at cfg 7.5; none at cfg 1).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from comfyui_env import import_pack_in_process

pack = import_pack_in_process()

import comfy.samplers  # noqa: E402
import nodes as comfy_nodes  # noqa: E402
from comfy.ldm.modules.attention import optimized_attention  # noqa: E402
from comfy.model_patcher import ModelPatcher  # noqa: E402

from comfyui_echoreel_pack.echoreel_core.echoreel.features import ActionFeatures, Reference, action_features  # noqa: E402
from comfyui_echoreel_pack.echoreel_core.echoreel.weights import EchoReel, EchoReelConfig  # noqa: E402
from comfyui_echoreel_pack.echoreel_core.pipelines.long_video import generate_long_latents  # noqa: E402
from comfyui_echoreel_pack.echoreel_core.models.video_model import VideoModel  # noqa: E402
from comfyui_echoreel_pack.echoreel_core.pipelines.generate import EchoReelGuidance, SamplingSettings, generate_latents  # noqa: E402
from comfyui_echoreel_pack.echoreel_core.models.presets import tiny_preset  # noqa: E402
from comfyui_echoreel_pack.echoreel_core.sampling.dpmpp import (  # noqa: E402
    karras_schedule, percent_to_sigma, sigma_table)
from comfyui_echoreel_pack.nodes.echoreel_nodes import ApplyEchoReel  # noqa: E402
from comfyui_echoreel_pack.nodes.model import native_model  # noqa: E402

FAMILIES = ["videocrafter2-t2v-512", "lvdm-short-t2v"]  # scale_arr, none
STEPS, CFG, SEED = 8, 7.5, 21
# max |core - KSampler| / max |KSampler|, measured: 1.1e-6 to 2.0e-6 over both families and every case
# below (8 steps, cfg 7.5; with cfg 1: 5e-8, the LATENT's / 0.18215 round trip alone); the bound leaves
# room for other CPUs' kernels
BOUND = 1e-5


@dataclasses.dataclass
class Tiny:
    core: VideoModel
    native: ModelPatcher
    echoreel: EchoReel
    features: ActionFeatures
    positive: torch.Tensor  # (1, 77, D)
    negative: torch.Tensor


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request) -> Tiny:
    """A tiny model and EchoReel, every weight random, the same weights natively (fp32 storage) and in
    the core; the features are the Prism's on a random reference latent and caption."""
    torch.manual_seed(0)
    core = VideoModel(dataclasses.replace(tiny_preset(request.param), height=32, width=32)).eval()  # 16x16 latents
    for p in core.unet.parameters():
        p.data.normal_(0, 0.05)
    core.set_attention(optimized_attention)  # the native UNet's attention: only the sampler differs
    config = EchoReelConfig.for_preset(core.preset, layers=2, latent_dim=32, heads=2, head_dim=16, latent_text_dim=32,
                                       latent_height=8, latent_width=8)
    echoreel = EchoReel(config).eval()
    for p in echoreel.parameters():
        p.data.normal_(0, 0.1)
    echoreel.set_attention(optimized_attention)
    g = torch.Generator().manual_seed(3)
    positive, negative, caption = torch.randn(3, 1, 77, core.preset.unet.context_dim, generator=g)
    reference = Reference(torch.randn(1, 4, core.preset.frames, 8, 8, generator=g), caption)
    features = action_features(echoreel, positive, negative, [reference])
    native = native_model(core.preset, core.schedule, core.unet.state_dict(), "fp32")
    return Tiny(core, native, echoreel, features, positive, negative)


def ksampler(model: ModelPatcher, t: Tiny, steps: int = STEPS) -> torch.Tensor:
    """ComfyUI's KSampler node, dpmpp_2m / karras, from an empty 5-D latent: the core's scaled latents."""
    p = t.core.preset
    f = 2 ** (len(p.vae.ch_mult) - 1)
    latent = {"samples": torch.zeros(1, 4, p.frames, p.height // f, p.width // f)}
    with torch.no_grad():
        (out,) = comfy_nodes.KSampler().sample(model, SEED, steps, CFG, "dpmpp_2m", "karras", [[t.positive, {}]],
                                               [[t.negative, {}]], latent)
    return model.model.process_latent_in(out["samples"])  # LATENT holds x0 / 0.18215


def core(t: Tiny, guide: EchoReelGuidance | None = None, steps: int = STEPS) -> torch.Tensor:
    p = t.core.preset
    settings = SamplingSettings(height=p.height, width=p.width, frames=p.frames, fps=p.fps, steps=steps, cfg=CFG,
                                seed=SEED, sampler="dpmpp_2m")
    return generate_latents(t.core, t.positive, t.negative, settings, echoreel=guide)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_the_sigmas_are_the_native_models(tiny):
    """The core's sigma' table, karras schedule and percent window are ComfyUI's, bit for bit."""
    sampling = tiny.native.get_model_object("model_sampling")
    table = sigma_table(tiny.core.schedule)
    assert torch.equal(table.sigmas, sampling.sigmas) and torch.equal(table.log_sigmas, sampling.log_sigmas)
    assert (tiny.core.schedule.scale_arr is not None) == (tiny.core.preset.name.startswith("videocrafter2"))
    for steps in (1, 8, 20):
        assert torch.equal(karras_schedule(tiny.core.schedule, steps),
                           comfy.samplers.calculate_sigmas(sampling, "karras", steps))
    for percent in (0.0, 0.1, 0.25, 0.5, 0.7, 0.999, 1.0):
        ours, theirs = percent_to_sigma(table, percent), sampling.percent_to_sigma(percent)
        assert ours == theirs or (percent <= 0 and ours > 1e6 and theirs > 1e6)


@pytest.mark.parametrize("window", [None, (1.0, 0.0, 1.0), (0.8, 0.25, 0.7)], ids=["base", "echoreel", "windowed"])
def test_core_dpmpp_2m_equals_comfyui_ksampler(tiny, window):
    """Without EchoReel, with it over the whole schedule, and with a window that cuts steps on both
    sides (strength 0.8): the core's latents are KSampler's within BOUND."""
    if window is None:
        model, guide = tiny.native, None
    else:
        strength, start, end = window
        weights = ModelPatcher(tiny.echoreel, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
        model = ApplyEchoReel.execute(tiny.native, weights, tiny.features, strength, start, end).args[0]
        guide = EchoReelGuidance(tiny.echoreel, tiny.features, strength, start, end)
        sigmas = karras_schedule(tiny.core.schedule, STEPS)[:-1]
        table = sigma_table(tiny.core.schedule)
        inside = ((sigmas >= percent_to_sigma(table, end)) & (sigmas <= percent_to_sigma(table, start))).sum()
        assert (0 < inside < STEPS) == (window[1:] != (0.0, 1.0))
    theirs = ksampler(model, tiny)
    ours = core(tiny, guide)
    assert torch.isfinite(ours).all() and ours.abs().max() > 0.1
    assert relative(ours, theirs) <= BOUND, relative(ours, theirs)
    if guide is not None:  # EchoReel acted
        assert relative(core(tiny), ours) > 1e-4


def test_the_core_default_attention_moves_it_by_rounding_only(tiny):
    """toy.evaluate runs the core with its own attention (SDPA); against KSampler that adds float
    rounding only (measured: 1.3e-6 relative on both families, as with ComfyUI's attention)."""
    tiny.core.set_attention(None)
    try:
        ours = core(tiny)
    finally:
        tiny.core.set_attention(optimized_attention)
    assert relative(ours, ksampler(tiny.native, tiny)) <= BOUND


def test_sampler_choices_are_checked():
    p = tiny_preset("lvdm-short-t2v")
    model = VideoModel(p).eval()
    settings = SamplingSettings(height=p.height, width=p.width, frames=p.frames, steps=2, sampler="euler")
    context = torch.zeros(1, 77, p.unet.context_dim)
    with pytest.raises(ValueError, match="sampler must be one of ddim, dpmpp_2m"):
        generate_latents(model, context, context, settings)
    with pytest.raises(ValueError, match="runs only ddim"):  # the long-video loop is DDIM's
        generate_long_latents(model, [context], context, dataclasses.replace(settings, sampler="dpmpp_2m"))
