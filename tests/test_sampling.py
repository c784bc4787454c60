"""Noise schedule and DDIM against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from echoreel_core.sampling.ddim import ddim_schedule, ddim_step, ddim_timesteps, sample_ddim
from echoreel_core.sampling.schedule import NoiseSchedule, official_alphas_cumprod, official_scale_arr


def hand_alphas_cumprod(start=0.00085, end=0.012, n=1000) -> list[float]:
    lo, hi = math.sqrt(start), math.sqrt(end)
    out, product = [], 1.0
    for i in range(n):
        beta = (lo + (hi - lo) * i / (n - 1)) ** 2
        product *= 1.0 - beta
        out.append(product)
    return out


def test_alphas_cumprod_match_hand_values():
    ours = official_alphas_cumprod()
    hand = hand_alphas_cumprod()
    assert ours.dtype == torch.float32 and ours.shape == (1000,)
    torch.testing.assert_close(ours, torch.tensor(hand, dtype=torch.float32), rtol=2e-6, atol=0)
    # values quoted in videocrafter.md §3.1
    for t, value in {0: 0.99915, 1: 0.998296, 21: 0.980381, 961: 0.0072817, 981: 0.0057755, 999: 0.0046601}.items():
        assert ours[t].item() == pytest.approx(value, rel=1e-4)


def test_scale_arr_official_and_bugged_lengths():
    fixed = official_scale_arr(0.3, fix_scale_bug=True)
    bugged = official_scale_arr(0.7, fix_scale_bug=False)
    assert fixed.shape == (1000,) and bugged.shape == (1400,)
    assert bugged[0].item() == 1.0 and bugged[399].item() == pytest.approx(0.7)
    assert bugged[1].item() == pytest.approx(1 + (0.7 - 1) / 399, rel=1e-7)
    assert torch.all(bugged[400:] == torch.tensor(0.7))
    assert fixed[200].item() == pytest.approx(1 + (0.3 - 1) * 200 / 399, rel=1e-6)


def test_ddim_grid_is_the_official_plus_one_grid():
    assert ddim_timesteps(50).tolist() == list(range(1, 1000, 20))
    assert len(ddim_timesteps(30)) == 31 and ddim_timesteps(30)[-1] == 991  # 1000 // 30 = 33
    assert len(ddim_timesteps(25)) == 25 and ddim_timesteps(25)[-1] == 961
    assert ddim_timesteps(3).tolist() == [1, 334, 667, 999]  # official: 1000, out of range
    with pytest.raises(ValueError):
        ddim_timesteps(0)


def test_ddim_coefficients_at_first_and_last_step():
    abar = hand_alphas_cumprod()
    scale = official_scale_arr(0.7, fix_scale_bug=False)
    steps = ddim_schedule(NoiseSchedule(official_alphas_cumprod(), scale), 50, eta=1.0)
    first, last = steps[0], steps[-1]
    assert first.timestep == 981 and last.timestep == 1
    a, a_prev = abar[981], abar[961]
    assert first.alpha.item() == pytest.approx(a, rel=2e-6)
    assert first.alpha_prev.item() == pytest.approx(a_prev, rel=2e-6)
    assert first.sigma.item() == pytest.approx(math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev)), rel=1e-5)
    assert first.scale.item() == pytest.approx(0.7) and first.scale_prev.item() == pytest.approx(0.7)
    # the last step targets abar[0] (0.99915), not 1, and s_prev = scale_arr[0] = 1
    assert last.alpha_prev.item() == pytest.approx(0.99915, rel=1e-6)
    assert last.scale.item() == pytest.approx(1 + (0.7 - 1) / 399, rel=1e-6)
    assert last.scale_prev.item() == 1.0
    eta0 = ddim_schedule(NoiseSchedule(official_alphas_cumprod()), 50, eta=0.0)
    assert all(step.sigma.item() == 0.0 for step in eta0)


def test_ddim_step_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    x, eps, noise = (torch.randn(1, 4, 2, 3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    step = ddim_schedule(NoiseSchedule(official_alphas_cumprod(), official_scale_arr(0.7)), 50)[10]
    a, ap, s = step.alpha.double(), step.alpha_prev.double(), step.sigma.double()
    x0 = (x - (1 - a).sqrt() * eps) / a.sqrt() / step.scale.double()
    expected = ap.sqrt() * step.scale_prev.double() * x0 + (1 - ap - s**2).sqrt() * eps + s * noise
    x_prev, x0_out = ddim_step(x, eps, step, noise)
    # the coefficients are float32 arithmetic, as in the official sampler
    torch.testing.assert_close(x_prev, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x0_out, x0, atol=1e-6, rtol=1e-6)


def test_noise_is_drawn_every_step_even_without_eta_and_callback_sees_every_step():
    steps = ddim_schedule(NoiseSchedule(official_alphas_cumprod()), 10, eta=0.0)
    generator = torch.Generator().manual_seed(5)
    seen = []
    x_T = torch.randn(1, 4, 2, 4, 4)
    sample_ddim(lambda x, t: torch.zeros_like(x), x_T, steps, generator, lambda i, x, x0: seen.append((i, x.shape, x0.shape)))
    reference = torch.Generator().manual_seed(5)
    for _ in range(10):
        torch.randn(1, 4, 2, 4, 4, generator=reference)
    assert torch.equal(torch.randn(3, generator=generator), torch.randn(3, generator=reference))
    assert [i for i, _, _ in seen] == list(range(10))


def test_callback_can_cancel():
    steps = ddim_schedule(NoiseSchedule(official_alphas_cumprod()), 10)
    calls = []

    def cancel(i, x, x0):
        calls.append(i)
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample_ddim(lambda x, t: torch.zeros_like(x), torch.randn(1, 4, 1, 2, 2), steps, None, cancel)
    assert calls == [0, 1, 2]


def test_q_sample_applies_the_scale_to_the_data_term():
    schedule = NoiseSchedule(official_alphas_cumprod(), official_scale_arr(0.7, fix_scale_bug=False))
    x0, noise = torch.ones(2, 1, 1, 1, 1), torch.zeros(2, 1, 1, 1, 1)
    t = torch.tensor([0, 500])
    out = schedule.q_sample(x0, t, noise).flatten()
    abar = official_alphas_cumprod()
    assert out[0].item() == pytest.approx(abar[0].sqrt().item())
    assert out[1].item() == pytest.approx(abar[500].sqrt().item() * 0.7)
