"""Blend, schedule, frame weights, mask and the injection report (issue 21), on the tiny models
under ComfyUI's KSampler and the VideoCrafter Sampler.

Two recording patches sit under the same SITE_PATCH key as EchoReel, one before it and one after,
so each site's integration residual is `after - before` exactly where it is zero (x + 0 - x == 0);
where it is not, it is compared with the unweighted patch's residual on the same tokens.
"""

from __future__ import annotations

import logging

import pytest
import torch

from comfyui_env import import_pack_in_process

pack = import_pack_in_process()

import comfy.sample  # noqa: E402

from comfyui_echoreel_pack.echoreel_core.echoreel.control import (  # noqa: E402
    Curve, blend_features, frame_weights, parse_curve, resize_mask)
from comfyui_echoreel_pack.echoreel_core.echoreel.features import ActionFeatures  # noqa: E402
from comfyui_echoreel_pack.echoreel_core.echoreel.report import InjectionError, site_level  # noqa: E402
from comfyui_echoreel_pack.nodes.echoreel_nodes import ApplyEchoReel  # noqa: E402
from comfyui_echoreel_pack.nodes.loaders import native_vae  # noqa: E402
from comfyui_echoreel_pack.nodes.model import SITE_PATCH  # noqa: E402
from comfyui_echoreel_pack.nodes.motion_control import BlendMotion, MotionFrameWeights, MotionSchedule  # noqa: E402
from comfyui_echoreel_pack.nodes.official_ddim import official_ddim_sampler, official_ddim_sigmas  # noqa: E402
from comfyui_echoreel_pack.nodes.patch import EchoReelPatch, sigma_to_percent  # noqa: E402
from comfyui_echoreel_pack.nodes.sampler import LongVideoSampler, VideoCrafterSampler  # noqa: E402
from test_native_model import conditioning, ksample, tiny  # noqa: E402

FAMILIES = ["lvdm-short-t2v", "videocrafter2-t2v-512"]


class Recorder:
    """A patch that keeps the tokens and options of every site call it sees."""

    def __init__(self):
        self.calls = []

    def __call__(self, tokens, options):
        keep = {k: options[k] for k in ("sigmas", "cond_or_uncond", "echoreel_site", "echoreel_grid")}
        self.calls.append((dict(keep), tokens.clone()))
        return tokens

    def __deepcopy__(self, memo):
        return self


def applied(t, strength=1.0, start=0.0, end=1.0, **controls):
    """The tiny model with recorders around EchoReel: (model, before, after)."""
    before, after = Recorder(), Recorder()
    model = t.native.clone()
    model.set_model_patch(before, SITE_PATCH)
    model = ApplyEchoReel.execute(model, t.weights, t.features, strength, start, end, **controls).args[0]
    model.set_model_patch(after, SITE_PATCH)
    return model, before, after


def plain_patch(t) -> EchoReelPatch:
    sites = [s.path for s in t.native.model.diffusion_model.sites]
    return EchoReelPatch(t.weights, t.features, 1.0, 0.0, 1.0, t.native.get_model_object("model_sampling"), sites)


def site_calls(t, before, after):
    """Per site call: (options, the tokens before EchoReel, its residual, the unweighted residual)."""
    assert len(before.calls) == len(after.calls) > 0
    plain = plain_patch(t)
    out = []
    for (options, x), (_, y) in zip(before.calls, after.calls):
        with torch.no_grad():
            reference = plain(x, options) - x
        out.append((options, x, y - x, reference))
    return out


def check_weighted(calls, weight_of):
    """Each call's residual is exactly 0 where weight_of(options) ((h w) or 1, t or 1, 1) is 0 and
    weight x the unweighted residual elsewhere. Returns the sites where it was non-zero."""
    acted = set()
    for options, x, residual, reference in calls:
        h, w = options["echoreel_grid"]
        weight = weight_of(options).expand(h * w, x.shape[1], 1)
        r = residual.unflatten(0, (-1, h * w))  # (b, (h w), t, c)
        zero = (weight == 0).expand(r.shape[0], -1, -1, r.shape[-1])
        assert torch.equal(r[zero], torch.zeros_like(r[zero])), f"site {options['echoreel_site']}: not exactly 0"
        expected = reference.unflatten(0, (-1, h * w)) * weight
        bound = 1e-5 * (x.abs().max() + reference.abs().max())
        assert (r - expected).abs().max() <= bound, options["echoreel_site"]
        if bool((weight > 0).any()):
            assert r.abs().max() > 1e-4  # it acted where allowed
            acted.add(options["echoreel_site"])
    return acted


def percent_of(t, options) -> float:
    return sigma_to_percent(t.native.get_model_object("model_sampling"), float(options["sigmas"][0]))


# ---- the pure parts ----

def test_curves_parse_evaluate_and_name_bad_keyframes():
    curve = parse_curve("0:1, 0.4:1\n0.7:0", "schedule", "percent", x_max=1.0)
    assert [curve(x) for x in (0.0, 0.2, 0.4, 0.55, 0.7, 1.0)] == pytest.approx([1, 1, 1, 0.5, 0, 0])
    step = parse_curve("0:1; 0.5:1; 0.5:0", "s", "percent")
    assert (step(0.49), step(0.5), step(0.9)) == (1.0, 0.0, 0.0)
    assert frame_weights(parse_curve("0:0, 3:1, 7:1, 8:0", "f", "frame"), 10).tolist() == pytest.approx(
        [0, 1 / 3, 2 / 3, 1, 1, 1, 1, 1, 0, 0])
    assert Curve(((0.2, 0.5),))(0.0) == 0.5 and curve.peak == 1.0
    for text, message in (("0.5", "'0.5' is not `percent:value`"), ("0:1, 0.5:x", "'0.5:x' is not"),
                          ("0.6:1, 0.2:0", "must be in order of percent"), ("1.5:1", "at most 1"),
                          ("0:-1", "at least 0, got -1"), (" , ", "no keyframes")):
        with pytest.raises(ValueError, match=f"schedule: .*{message}" if "keyframes" not in message else message):
            parse_curve(text, "schedule", "percent", x_max=1.0)


def test_resize_mask_is_area_exact_zero_outside_and_checks_frames():
    mask = torch.zeros(1, 32, 32)
    mask[:, :, :14] = 1  # columns 0-13: on an 8-wide grid cells 0-2 whole, cell 3 half (px 12-15), 4-7 none
    small = resize_mask(mask, (8, 8), 4)
    assert small.shape == (1, 8, 8)
    assert torch.equal(small[0, :, :3], torch.ones(8, 3)) and torch.equal(small[0, :, 4:], torch.zeros(8, 4))
    assert torch.allclose(small[0, :, 3], torch.full((8,), 0.5))
    assert resize_mask(torch.ones(4, 6, 10), (3, 5), 4).shape == (4, 3, 5)
    with pytest.raises(ValueError, match="mask: 3 mask frames for a 4-frame video; give 1 mask"):
        resize_mask(torch.ones(3, 8, 8), (4, 4), 4)


def test_sigma_to_percent_inverts_the_model_samplings_percent_to_sigma():
    t = tiny("videocrafter2-t2v-512")
    sampling = t.native.get_model_object("model_sampling")
    for p in (0.001, 0.1, 0.25, 0.5, 0.7, 0.999):
        assert sigma_to_percent(sampling, sampling.percent_to_sigma(p)) == pytest.approx(p, abs=1e-6)
    assert sigma_to_percent(sampling, float(sampling.sigma_max) * 2) == 0.0


# ---- blend ----

def test_blend_one_zero_is_the_single_motion_bit_for_bit():
    t = tiny("lvdm-short-t2v")
    g = torch.Generator().manual_seed(7)
    other = ActionFeatures(torch.randn(t.features.cond.shape, generator=g),
                           torch.randn(t.features.uncond.shape, generator=g), 4)
    (blended,) = BlendMotion.execute(t.features, 1.0, other, 0.0).args
    assert torch.equal(blended.cond, t.features.cond) and torch.equal(blended.uncond, t.features.uncond)
    (second,) = BlendMotion.execute(t.features, 0.0, other, 1.0).args
    assert torch.equal(second.cond, other.cond)
    half = blend_features([(t.features, 0.5), (other, 0.5)])
    assert torch.allclose(half.uncond, (t.features.uncond + other.uncond) / 2, atol=1e-7)
    single = ksample(ApplyEchoReel.execute(t.native, t.weights, t.features, 1.0, 0.0, 1.0).args[0], t, steps=2)
    mixed = ksample(ApplyEchoReel.execute(t.native, t.weights, blended, 1.0, 0.0, 1.0).args[0], t, steps=2)
    assert torch.equal(single, mixed)
    longer = ActionFeatures(torch.cat([other.cond] * 2, 1), torch.cat([other.uncond] * 2, 1), 4)
    with pytest.raises(ValueError, match="motion 2 has 8 tokens .* motion 1 has 4"):
        BlendMotion.execute(t.features, 0.5, longer, 0.5)


# ---- schedule, frame weights, mask: under KSampler ----

def test_schedule_is_zero_where_the_curve_is_zero_and_scales_elsewhere(caplog):
    """ddim_uniform, 4 steps: percents 0.248, 0.499, 0.749, 0.999 (ComfyUI's grid); the curve there
    0.79, 0.58, 0.5, 0."""
    caplog.set_level(logging.INFO)
    t = tiny("videocrafter2-t2v-512")
    curve = MotionSchedule.execute("0:1, 0.6:0.5, 0.8:0.5, 0.8:0").args[0]
    model, before, after = applied(t, strength=0.8, schedule=curve)
    ksample(model, t, steps=4)
    calls = site_calls(t, before, after)
    values = sorted({round(curve(percent_of(t, o)), 6) for o, *_ in calls})
    assert values[0] == 0 and 0 < values[1] < values[-1]  # a step with the curve at 0, and scaled ones
    acted = check_weighted(calls, lambda o: torch.tensor(0.8 * curve(percent_of(t, o))).reshape(1, 1, 1))
    assert acted == set(range(7))
    report = [p for p in model.model_options["transformer_options"]["patches"][SITE_PATCH]
              if isinstance(p, EchoReelPatch)][0].last_report
    assert (report.layers, report.steps, report.total_steps, report.layer_steps) == (7, 3, 4, 21)
    assert "7 of 7 integration layers ran at 3 of 4 steps (21 layer-steps)" in caplog.text


@pytest.mark.parametrize("name", FAMILIES)
def test_frame_weights_zero_the_residual_exactly_in_weight_zero_frames(name):
    t = tiny(name)
    curve = MotionFrameWeights.execute("0:0, 1:0, 3:1").args[0]  # frames 0, 1: 0; 2: 0.5; 3: 1
    model, before, after = applied(t, frame_weights=curve)
    ksample(model, t, steps=2)
    weights = torch.tensor([0.0, 0.0, 0.5, 1.0]).reshape(1, 4, 1)
    assert check_weighted(site_calls(t, before, after), lambda o: weights) == set(range(7))


@pytest.mark.parametrize("name", FAMILIES)
def test_mask_leaves_every_site_exactly_unchanged_outside(name):
    """A mask over the left half of the frame (image size): at every site (16x16 and 8x8 grids) the
    right half's residual is exactly 0, the left half's the unmasked one."""
    t = tiny(name)
    mask = torch.zeros(1, 32, 32)
    mask[:, :, :16] = 1
    model, before, after = applied(t, mask=mask)
    ksample(model, t, steps=2)
    calls = site_calls(t, before, after)
    assert {o["echoreel_grid"] for o, *_ in calls} == {(16, 16), (8, 8)}
    acted = check_weighted(calls, lambda o: resize_mask(mask, o["echoreel_grid"], 4).flatten(1).T[:, :, None])
    assert acted == set(range(7))


# ---- the VideoCrafter Sampler ----

def test_per_frame_mask_schedule_and_report_under_the_videocrafter_sampler():
    t = tiny("lvdm-short-t2v")
    mask = torch.zeros(4, 32, 32)
    mask[0, :16] = 1  # frame 0: top half; 1: bottom half; 2: nothing; 3: a 12x12 corner (not on the 8x8 grid)
    mask[1, 16:] = 1
    mask[3, :12, :12] = 1
    curve = parse_curve("0:1, 0.5:1, 0.5:0", "schedule", "percent")
    model, before, after = applied(t, schedule=curve, mask=mask)
    vae = native_vae(t.core.vae)
    out = VideoCrafterSampler.execute(model, conditioning(t.positive), conditioning(t.negative), vae, 32, 32, 4, 8,
                                      3, 7.5, 1.0, 5)
    calls = site_calls(t, before, after)
    check_weighted(calls, lambda o: curve(percent_of(t, o)) * resize_mask(mask, o["echoreel_grid"], 4).flatten(1).T[:, :, None])
    ran = {float(o["sigmas"][0]) for o, *_ in calls if curve(percent_of(t, o)) > 0}
    seen = {float(o["sigmas"][0]) for o, *_ in calls}
    text = out.ui["text"][0] if isinstance(out.ui, dict) else out.ui.as_dict()["text"][0]
    assert f"7 of 7 integration layers ran at {len(ran)} of {len(seen)} steps ({7 * len(ran)} layer-steps)" in text
    assert 0 < len(ran) < 3 and "Mean residual/hidden norm per UNet level: input" in text and "finite" in text


# ---- the report ----

def report_of(model) -> object:
    return next(p for p in model.model_options["transformer_options"]["patches"][SITE_PATCH]
                if isinstance(p, EchoReelPatch)).last_report


def test_report_counts_layers_and_steps_inside_the_window(caplog):
    caplog.set_level(logging.INFO)
    t = tiny("lvdm-short-t2v")
    model, before, _ = applied(t, start=0.2, end=0.6)
    ksample(model, t, sampler="euler", scheduler="karras", steps=5)
    sampling = t.native.get_model_object("model_sampling")
    sigmas = {float(o["sigmas"][0]) for o, _ in before.calls}
    inside = {s for s in sigmas if sampling.percent_to_sigma(0.6) <= s <= sampling.percent_to_sigma(0.2)}
    report = report_of(model)
    assert 0 < len(inside) < len(sigmas) == 5
    assert (report.layers, report.steps, report.layer_steps, report.total_steps) == (7, len(inside), 7 * len(inside), 5)
    assert set(report.ratio) == {"input", "middle", "output"} and all(0 < v < 100 for v in report.ratio.values())
    assert not report.nonfinite and report.text().replace("\n", " ") in caplog.text
    assert [site_level(p) for p in ("input_blocks.1.1.x", "middle_block.2.x", "output_blocks.3.2.x")] == \
        ["input", "middle", "output"]


def test_no_layer_ran_is_an_error_under_ksampler_and_the_videocrafter_sampler():
    t = tiny("lvdm-short-t2v")
    window = applied(t, start=0.9, end=0.95)[0]  # 4 ddim_uniform steps: percents 0.248, 0.499, 0.749, 0.999
    with pytest.raises(InjectionError, match=r"no integration layer ran .*start_percent 0.9, end_percent 0.95"):
        ksample(window, t, steps=4)
    vae = native_vae(t.core.vae)
    with pytest.raises(InjectionError, match="no integration layer ran"):
        VideoCrafterSampler.execute(window, conditioning(t.positive), conditioning(t.negative), vae, 32, 32, 4, 8,
                                    2, 7.5, 1.0, 5)
    curve = parse_curve("0:0, 0.6:0, 0.6:1, 0.9:1, 0.9:0", "s", "percent")  # 0 at both steps' percents, 0.499, 0.999
    with pytest.raises(InjectionError, match="schedule 0:0, 0.6:0, 0.6:1, 0.9:1, 0.9:0"):
        ksample(applied(t, schedule=curve)[0], t, steps=2)
    # not errors: strength 0, and a run over a part of the schedule outside the window (split sigmas)
    off = applied(t, strength=0.0)[0]
    ksample(off, t, steps=2)
    assert report_of(off).layer_steps == 0 and report_of(off).total_steps == 2
    late = applied(t, start=0.0, end=0.3)[0]
    sigmas = official_ddim_sigmas(late.get_model_object("model_sampling"), 4)[2:]  # percents 0.5 .. the end
    latent = torch.zeros(1, 4, 4, 16, 16)
    with torch.no_grad():
        comfy.sample.sample_custom(late, comfy.sample.prepare_noise(latent, 1), 7.5, official_ddim_sampler(1.0), sigmas,
                                   conditioning(t.positive, fps=8), conditioning(t.negative, fps=8), latent, seed=1)
    assert report_of(late).layer_steps == 0 and report_of(late).total_steps == 2


def test_non_finite_values_are_reported():
    t = tiny("lvdm-short-t2v")
    sites = [s.path for s in t.native.model.diffusion_model.sites]
    bad = ActionFeatures(torch.full_like(t.features.cond, float("nan")), t.features.uncond, 4)
    patch = EchoReelPatch(t.weights, bad, 1.0, 0.0, 1.0, t.native.get_model_object("model_sampling"), sites)
    channels = t.native.model.diffusion_model.sites[2].channels
    options = {"sigmas": torch.tensor([5.0]), "cond_or_uncond": [1, 0], "echoreel_site": 2, "echoreel_grid": (4, 4)}
    with torch.no_grad():
        patch(torch.randn(2 * 16, 4, channels), options)
    report = patch.finish(torch.tensor([5.0, 0.0]))
    assert report.nonfinite == [f"residual at {sites[2]} (percent {patch.percent(5.0):.3f})"]
    assert "NON-FINITE values: residual at middle_block" in report.text()


def test_the_long_video_sampler_refuses_controls_it_cannot_apply():
    t = tiny("lvdm-short-t2v")
    model = ApplyEchoReel.execute(t.native, t.weights, t.features, 1.0, 0.0, 1.0, mask=torch.ones(1, 32, 32)).args[0]
    with pytest.raises(ValueError, match="disconnect Apply EchoReel's mask"):
        LongVideoSampler.execute(model, conditioning(t.positive), conditioning(t.negative), native_vae(t.core.vae), 32,
                                 32, 4, 8, 2, 7.5, 1.0, 5, 2, 1, 4.0, 0.4, False)
