"""Long videos with Reuse-and-Diffuse (FNR, PNS, DSG): the sampler on a toy denoiser, the pipeline on tiny models."""

from __future__ import annotations

import dataclasses
import gc
import math
from types import SimpleNamespace

import pytest
import torch
from tiny import tiny_model

from echoreel_core.echoreel.features import Reference, action_features
from echoreel_core.echoreel.weights import EchoReel, EchoReelConfig
from echoreel_core.pipelines.long_video import generate_long_latents, long_image_to_video, long_text_to_video
from echoreel_core.models.video_model import VideoModel
from echoreel_core.pipelines.generate import EchoReelGuidance, SamplingSettings, generate_latents, image_to_video, text_to_video
from echoreel_core.sampling.ddim import ddim_schedule, randn, sample_ddim
from echoreel_core.sampling.long_video import dsg_window, fnr_pns_noise, sample_long_video
from echoreel_core.sampling.schedule import NoiseSchedule, official_alphas_cumprod


SHAPE = (1, 2, 6, 5, 7)  # (b, c, N, h, w): 6 frames per clip; h, w unlike anything else alive in the tests
STEPS = ddim_schedule(NoiseSchedule(official_alphas_cumprod()), 8, eta=1.0)


def toy_denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Depends on every frame (a temporal mix) and on t, like a UNet, at no cost."""
    return torch.tanh(x + 0.3 * x.mean(dim=2, keepdim=True)) * (t.float().view(-1, 1, 1, 1, 1) / 1000)


def long_sample(seed: int = 0, num_clips: int = 3, **kwargs):
    return sample_long_video(lambda k: toy_denoise, SHAPE, STEPS, num_clips, generator=torch.Generator().manual_seed(seed), **kwargs)


# ---- the sampler -------------------------------------------------------------------------------

def test_one_clip_is_the_ordinary_sampler():
    g = torch.Generator().manual_seed(5)
    expected_steps, steps = [], []
    expected = sample_ddim(toy_denoise, randn(SHAPE, g), STEPS, g, lambda i, x, x0: expected_steps.append(i))
    (clip,) = long_sample(seed=5, num_clips=1, overlap=2, callback=lambda i, x, x0: steps.append(i))
    assert torch.equal(clip, expected)
    assert steps == expected_steps == list(range(len(STEPS)))


def test_fnr_copies_exactly_and_pns_keeps_unit_variance():
    alpha, overlap = 4.0, 4
    reversed_noise = torch.randn(1, 4, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    x = fnr_pns_noise(reversed_noise, overlap, alpha, g)
    assert torch.equal(x[:, :, :overlap], reversed_noise[:, :, :overlap])  # FNR
    pns = x[:, :, overlap:]
    assert abs(pns.mean().item()) < 0.01 and abs(pns.std().item() - 1) < 0.01
    weight = alpha / math.sqrt(1 + alpha**2)  # 0.970: the correlation with the reversed past
    assert abs(torch.corrcoef(torch.stack([pns.flatten(), reversed_noise[:, :, overlap:].flatten()]))[0, 1] - weight) < 0.01
    # eps is one full-shape draw (all N frames, as official), of std 1/sqrt(1 + alpha^2)
    eps = torch.randn(reversed_noise.shape, generator=torch.Generator().manual_seed(1)) / math.sqrt(1 + alpha**2)
    torch.testing.assert_close(pns, weight * reversed_noise[:, :, overlap:] + eps[:, :, overlap:])
    assert torch.equal(g.get_state(), _state_after_one_draw(reversed_noise.shape))  # one draw of all N frames


def _state_after_one_draw(shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    torch.randn(shape, generator=g)
    return g.get_state()


def test_dsg_windows_match_the_official_schedule():
    def guided_steps(frame, steps=50, overlap=4, beta=0.4):
        window = [i for i in range(steps) if dsg_window(i, frame, overlap, steps, beta)]
        assert window == list(range(len(window)))  # always the first steps
        return len(window)

    assert [guided_steps(j) for j in range(16)] == [20, 15, 10, 5] + [0] * 12
    assert [guided_steps(j, beta=0.0) for j in range(4)] == [0, 0, 0, 0]
    assert guided_steps(0, beta=1.0) == 50
    assert [guided_steps(j, overlap=0) for j in range(2)] == [0, 0]


def test_seeded_and_deterministic():
    first, again, other = long_sample(0), long_sample(0), long_sample(1)
    assert len(first) == 3 and all(clip.shape == SHAPE for clip in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not any(torch.equal(a, b) for a, b in zip(first, other))


def test_fnr_and_dsg_are_applied_to_the_unet_inputs():
    overlap, beta, num_steps, frames = 2, 0.6, len(STEPS), SHAPE[2]
    inputs: dict[tuple[int, int], torch.Tensor] = {}
    clip_of_call = []

    def for_clip(k):
        def record(x, t):
            inputs[k, sum(1 for key in inputs if key[0] == k)] = x.clone()
            return toy_denoise(x, t)

        clip_of_call.append(k)
        return record

    seen = []
    sample_long_video(
        for_clip, SHAPE, STEPS, 3, overlap=overlap, beta=beta, generator=torch.Generator().manual_seed(0),
        callback=lambda i, x, x0: seen.append(i),
    )
    assert clip_of_call == [0, 1, 2] and seen == list(range(3 * num_steps))
    windows = [sum(dsg_window(i, j, overlap, num_steps, beta) for i in range(num_steps)) for j in range(frames)]
    assert windows == [5, 3, 0, 0, 0, 0]  # i < (2 - j) * 4 * 0.6
    for k in (1, 2):
        for i in range(num_steps):
            for j in range(frames):
                mine, previous_reversed = inputs[k, i][:, :, j], inputs[k - 1, i][:, :, frames - 1 - j]
                if dsg_window(i, j, overlap, num_steps, beta) or (i == 0 and j < overlap):  # DSG, and FNR at step 0
                    assert torch.equal(mine, previous_reversed), (k, i, j)
                else:
                    assert not torch.allclose(mine, previous_reversed), (k, i, j)


def test_drop_overlap_keeps_the_same_samples_minus_the_guided_frames():
    kept = long_sample(overlap=2)
    dropped = long_sample(overlap=2, drop_overlap=True)
    assert sum(c.shape[2] for c in kept) == 3 * 6
    assert sum(c.shape[2] for c in dropped) == 3 * 6 - 2 * 2
    assert torch.equal(dropped[0], kept[0])
    assert all(torch.equal(d, c[:, :, 2:]) for d, c in zip(dropped[1:], kept[1:]))


def test_decode_clip_receives_each_clip_as_soon_as_it_is_done():
    events = []
    sink = lambda k, latents: events.append(("decoded", k, latents))  # noqa: E731
    result = long_sample(callback=lambda i, x, x0: events.append(("step", i)), decode_clip=sink)
    assert result is None
    decoded = [(e[1], events.index(e)) for e in events if e[0] == "decoded"]
    assert [k for k, _ in decoded] == [0, 1, 2]
    assert [position for _, position in decoded] == [8, 17, 26]  # right after each clip's last step
    assert all(torch.equal(e[2], c) for e, c in zip([e for e in events if e[0] == "decoded"], long_sample()))


def test_retained_state_does_not_grow_with_the_number_of_clips():
    """Count the live latents (tensors of this test's unique h, w) while sampling, via the GC, at
    steps 0 and 3 of every clip (3: the last of DSG's window, when the history is fullest)."""

    def peak_live_latents(num_clips: int) -> int:
        peak, calls = 0, 0

        def counting(x, t):
            nonlocal peak, calls
            if calls % len(STEPS) in (0, 3):
                live = sum(1 for o in gc.get_objects() if type(o) is torch.Tensor and o.shape[-2:] == SHAPE[-2:])
                peak = max(peak, live)
            calls += 1
            return toy_denoise(x, t)

        sample_long_video(lambda k: counting, SHAPE, STEPS, num_clips, overlap=2,
                          generator=torch.Generator().manual_seed(0), decode_clip=lambda k, latents: None)
        return peak

    three, six = peak_live_latents(3), peak_live_latents(6)
    assert three == six
    # x (and its pre-DSG copy, the last x0) plus the history that FNR/PNS and DSG's window read
    # (steps 0..3 of 8 at beta 0.4, M 2), never all S steps
    assert six <= 3 + 4 < len(STEPS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_clips=0), "num_clips"),
        (dict(overlap=6), "overlap must be in 0..5"),
        (dict(overlap=-1), "overlap"),
        (dict(alpha=-0.1), "alpha"),
        (dict(beta=1.5), "beta"),
    ],
)
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        long_sample(**kwargs)


# ---- the pipeline ------------------------------------------------------------------------------

SETTINGS = SamplingSettings(height=16, width=16, frames=4, fps=8, steps=2, cfg=7.5, seed=3)  # 2 DDIM steps: t = 501, 1



def test_one_clip_equals_text_to_video_and_image_to_video():
    model = tiny_model("videocrafter2-t2v-512")
    assert torch.equal(long_text_to_video(model, "a fox", SETTINGS, num_clips=1, overlap=2), text_to_video(model, "a fox", SETTINGS))
    i2v = tiny_model("videocrafter1-i2v-512")
    image = torch.rand(20, 24, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(
        long_image_to_video(i2v, image, ["a cat"], SETTINGS, num_clips=1, overlap=2), image_to_video(i2v, image, "a cat", SETTINGS)
    )
    frames = long_image_to_video(i2v, image, "a cat", SETTINGS, num_clips=2, overlap=1)
    assert frames.shape == (8, 16, 16, 3)


def test_long_latents_need_only_the_unet_preset_and_schedule():
    """As generate.generate_latents (which the ComfyUI sampler calls with just these three)."""
    model = tiny_model("videocrafter2-t2v-512")
    bare = SimpleNamespace(unet=model.unet, preset=model.preset, schedule=model.schedule)
    cond, uncond = model.encode_text(["a fox"]), model.encode_text([""])
    one = generate_long_latents(bare, [cond], uncond, SETTINGS, overlap=2)
    assert torch.equal(one, generate_latents(bare, cond, uncond, SETTINGS))
    two = generate_long_latents(bare, [cond, cond], uncond, SETTINGS, overlap=2, drop_overlap=True)
    assert two.shape == (1, 4, 4 + 2, 8, 8) and torch.equal(two[:, :, :4], one)


def test_long_text_to_video_lengths_prompts_and_progress():
    model = tiny_model("videocrafter2-t2v-512")
    steps = []
    frames = long_text_to_video(model, "a fox", SETTINGS, num_clips=2, overlap=2, callback=lambda i, x, x0: steps.append(i))
    assert frames.shape == (8, 16, 16, 3) and 0 <= frames.min() and frames.max() <= 1
    assert steps == list(range(4))  # global indices across both clips
    dropped = long_text_to_video(model, "a fox", SETTINGS, num_clips=2, overlap=2, drop_overlap=True)
    assert dropped.shape[0] == 2 * 4 - 2
    assert torch.equal(dropped[:4], frames[:4])
    per_clip = long_text_to_video(model, ["a fox", "a bird"], SETTINGS, num_clips=2, overlap=2)
    assert torch.equal(per_clip[:4], frames[:4]) and not torch.equal(per_clip[4:], frames[4:])
    with pytest.raises(ValueError, match="one per clip"):
        long_text_to_video(model, ["a", "b", "c"], SETTINGS, num_clips=2, overlap=2)


def tiny_echoreel(model: VideoModel) -> EchoReel:
    config = EchoReelConfig.for_preset(
        model.preset, layers=2, latent_dim=32, heads=2, head_dim=16, latent_text_dim=32, latent_height=4, latent_width=4
    )
    torch.manual_seed(1)
    echoreel = EchoReel(config).eval()
    for p in echoreel.parameters():  # the zero-initialised output projections would make this trivial
        p.data.normal_(0, 0.1)
    return echoreel


def guidance(model: VideoModel, echoreel: EchoReel, seed: int, **kwargs) -> EchoReelGuidance:
    g = torch.Generator().manual_seed(seed)
    context = model.preset.unet.context_dim
    reference = Reference(torch.randn(1, 4, 4, 4, 4, generator=g), torch.randn(1, 77, context, generator=g))
    features = action_features(echoreel, model.encode_text(["a fox"]), model.encode_text([""]), [reference])
    return EchoReelGuidance(echoreel, features, **kwargs)


def attached_blocks(model: VideoModel) -> list:
    return [m for m in model.unet.modules() if getattr(m, "action_integration", None) is not None]


def test_with_echoreel_single_and_per_clip_guidance():
    model = tiny_model("lvdm-short-t2v")
    echoreel = tiny_echoreel(model)
    first, second = guidance(model, echoreel, 10), guidance(model, echoreel, 11, strength=0.5, start=0.3)
    with torch.no_grad():
        assert torch.equal(
            long_text_to_video(model, "a fox", SETTINGS, num_clips=1, overlap=1, echoreel=first),
            text_to_video(model, "a fox", SETTINGS, echoreel=first),
        )
        plain = long_text_to_video(model, "a fox", SETTINGS, num_clips=2, overlap=1)
        single = long_text_to_video(model, "a fox", SETTINGS, num_clips=2, overlap=1, echoreel=first)
        listed = long_text_to_video(model, "a fox", SETTINGS, num_clips=2, overlap=1, echoreel=[first, second])
        assert not attached_blocks(model)
        assert not torch.equal(single, plain)
        assert torch.equal(listed[:4], single[:4])  # clip 0 is guided by the first reference in both
        assert not torch.equal(listed[4:], single[4:])  # clip 1 by the second (re-bound, other strength and window)
        same = long_text_to_video(model, "a fox", SETTINGS, num_clips=2, overlap=1, echoreel=[first, first])
        assert torch.equal(same, single)

        def cancel(i, x, x0):
            if i == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            long_text_to_video(model, "a fox", SETTINGS, num_clips=2, overlap=1, echoreel=first, callback=cancel)
        assert not attached_blocks(model)  # detached whatever happens
        other = dataclasses.replace(first, weights=tiny_echoreel(model))
        with pytest.raises(ValueError, match="share one set"):
            long_text_to_video(model, "a fox", SETTINGS, num_clips=2, overlap=1, echoreel=[first, other])
