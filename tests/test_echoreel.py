"""EchoReel: official keys, attach/detach, cached features, batching, references, window, files."""

from __future__ import annotations

import dataclasses
import math
import pathlib
import subprocess
import sys

import pytest
import torch
from tiny import tiny_model

from echoreel_core.models.attention import relative_attention
from echoreel_core.loading.checkpoints import CheckpointError
from echoreel_core.echoreel.features import Reference, action_features, prism_tokens
from echoreel_core.echoreel.weights import EchoReel, EchoReelConfig, load_echoreel, save_echoreel
from echoreel_core.models.video_model import VideoModel, component_prefixes
from echoreel_core.pipelines.generate import EchoReelGuidance, SamplingSettings, generate_latents, guided_denoiser
from echoreel_core.sampling.ddim import ddim_schedule, randn, sample_ddim
from echoreel_core.models.presets import PRESETS

ROOT = pathlib.Path(__file__).resolve().parents[1]
LVDM_SITES = [f"input_blocks.{i}.1" for i in (1, 2, 4, 5, 7, 8)] + ["middle_block.1"] + [
    f"output_blocks.{i}.1" for i in range(3, 12)
]


def test_lvdm_echoreel_keys_and_sizes_match_official():
    with torch.device("meta"):
        echoreel = EchoReel(EchoReelConfig.for_preset(PRESETS["lvdm-short-t2v"]))
    state = echoreel.official_state_dict()
    assert len(state) == 1280
    assert sum(v.numel() for v in state.values()) == 646_225_080
    prism = {k: v for k, v in state.items() if k.startswith("video_inject_process.")}
    assert len(prism) == 4 + 18 * 56 + 12 and sum(v.numel() for v in prism.values()) == 492_652_040
    assert [s.path for s in echoreel.config.sites] == [f"{p}.transformer_blocks.0" for p in LVDM_SITES]
    shapes = {
        "video_inject_process.input_to_latent.weight": (768, 768),
        "video_inject_process.video_to_latent.weight": (640, 4),
        "video_inject_process.net.17.attn2.to_k.weight": (640, 768),
        "video_inject_process.net.0.attn1_tmp.relative_position_k.embeddings_table": (33, 80),
        "video_inject_process.net.3.ff4.net.0.proj.weight": (5120, 640),
        "video_inject_process.latent_to_T.2.weight": (4, 2560),
        "video_inject_process.latent_to_S.1.bias": (2560,),
        "input_blocks.1.1.transformer_blocks.0.video_inject_attn3_tmp.to_k.weight": (320, 4096),
        "input_blocks.1.1.transformer_blocks.0.video_inject_attn3.to_v.weight": (320, 64),
        "middle_block.1.transformer_blocks.0.video_inject_attn3_tmp.relative_position_v.embeddings_table": (33, 160),
        "output_blocks.11.1.transformer_blocks.0.video_inject_norm6.weight": (320,),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key


# ---- tiny models ------------------------------------------------------------------------------


def tiny_echoreel(model: VideoModel, trained: bool = True, query_positions: bool = False) -> EchoReel:
    config = EchoReelConfig.for_preset(
        model.preset, layers=2, latent_dim=32, heads=2, head_dim=16, latent_text_dim=32, latent_height=4, latent_width=4
    )
    config = dataclasses.replace(config, query_positions=query_positions)
    torch.manual_seed(1)
    echoreel = EchoReel(config).eval()
    if trained:  # the zero-initialised output projections would make every test below trivial
        for p in echoreel.parameters():
            p.data.normal_(0, 0.1)
    return echoreel


def reference(model: VideoModel, seed: int, frames: int = 4) -> Reference:
    g = torch.Generator().manual_seed(seed)
    return Reference(torch.randn(1, 4, frames, 4, 4, generator=g), torch.randn(1, 77, model.preset.unet.context_dim, generator=g))


def unet_inputs(model: VideoModel, b: int = 1):
    g = torch.Generator().manual_seed(2)
    return (
        torch.randn(b, 4, 4, 8, 8, generator=g),
        torch.tensor([981, 501][:b]),
        torch.randn(b, 77, model.preset.unet.context_dim, generator=g),
    )


@pytest.mark.parametrize("name", ["lvdm-short-t2v", "videocrafter2-t2v-512"])
@pytest.mark.parametrize("query_positions", [False, True])
def test_zero_initialised_echoreel_is_exactly_the_base(name, query_positions):
    model = tiny_model(name)
    echoreel = tiny_echoreel(model, trained=False, query_positions=query_positions)
    x, t, context = unet_inputs(model)
    with torch.no_grad():
        base = model.unet(x, t, context, fps=8)
        with echoreel.attach(model.preset, model.unet) as attachment:
            attachment.bind(prism_tokens(echoreel, context, [reference(model, 0)]), 4)
            attached = model.unet(x, t, context, fps=8)
    assert torch.equal(base, attached)


@pytest.mark.parametrize("name", ["lvdm-short-t2v", "videocrafter2-t2v-512"])
def test_detach_restores_the_base_bit_identically(name):
    model = tiny_model(name)
    echoreel = tiny_echoreel(model)
    x, t, context = unet_inputs(model)
    keys_before = list(model.unet.state_dict())
    with torch.no_grad():
        base = model.unet(x, t, context, fps=8)
        attachment = echoreel.attach(model.preset, model.unet)
        attachment.bind(prism_tokens(echoreel, context, [reference(model, 0)]), 4)
        attached = model.unet(x, t, context, fps=8)
        assert list(model.unet.state_dict()) == keys_before  # nothing registered in the base
        attachment.detach()
        after = model.unet(x, t, context, fps=8)
    assert (attached - base).abs().max() > 1e-3
    assert torch.equal(after, base)


def test_strength_zero_is_the_base_and_strength_scales_the_residual():
    model = tiny_model("lvdm-short-t2v")
    echoreel = tiny_echoreel(model)
    x, t, context = unet_inputs(model)
    tokens = prism_tokens(echoreel, context, [reference(model, 0)])
    with torch.no_grad():
        base = model.unet(x, t, context)
        outputs = {}
        for strength in (0.0, 1.0):
            with echoreel.attach(model.preset, model.unet, strength=strength) as attachment:
                attachment.bind(tokens, 4)
                outputs[strength] = model.unet(x, t, context)
    assert torch.equal(outputs[0.0], base)
    assert not torch.equal(outputs[1.0], base)


def test_echoreel_in_another_dtype_than_the_unet():
    """A bf16 UNet with fp32 EchoReel weights (as the ComfyUI loaders may produce) runs, close to fp32."""
    model = tiny_model("lvdm-short-t2v")
    echoreel = tiny_echoreel(model)
    x, t, context = unet_inputs(model)
    tokens = prism_tokens(echoreel, context, [reference(model, 0)])
    with torch.no_grad():
        with echoreel.attach(model.preset, model.unet) as attachment:
            attachment.bind(tokens, 4)
            full = model.unet(x, t, context)
            model.unet.to(torch.bfloat16)
            attachment.bind(tokens.to(torch.bfloat16), 4)
            half = model.unet(x.to(torch.bfloat16), t, context.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=5e-2, rtol=5e-2)


def test_each_sample_attends_only_to_its_own_reference():
    """The official `repeat` mixes references across a batch; ours equals per-sample runs."""
    model = tiny_model("lvdm-short-t2v")
    echoreel = tiny_echoreel(model)
    x, t, context = unet_inputs(model, b=2)
    refs = [reference(model, 10), reference(model, 11)]
    with torch.no_grad():
        singles = []
        for i in range(2):
            with echoreel.attach(model.preset, model.unet) as attachment:
                attachment.bind(prism_tokens(echoreel, context[i : i + 1], [refs[i]]), 4)
                singles.append(model.unet(x[i : i + 1], t[i : i + 1], context[i : i + 1]))
        tokens = torch.cat([prism_tokens(echoreel, context[i : i + 1], [refs[i]]) for i in range(2)])
        with echoreel.attach(model.preset, model.unet) as attachment:
            attachment.bind(tokens, 4)
            batched = model.unet(x, t, context)
    torch.testing.assert_close(batched, torch.cat(singles), atol=1e-5, rtol=1e-5)


def test_two_copies_of_one_reference_equal_the_single_reference():
    """Each reference keeps frame positions 0..t-1, so a duplicated reference splits every softmax
    weight in two and leaves the output unchanged: the position handling aligns references."""
    model = tiny_model("lvdm-short-t2v")
    echoreel = tiny_echoreel(model)
    x, t, context = unet_inputs(model)
    ref = reference(model, 0)
    with torch.no_grad():
        outputs = []
        for refs in ([ref], [ref, ref]):
            with echoreel.attach(model.preset, model.unet) as attachment:
                attachment.bind(prism_tokens(echoreel, context, refs), 4)
                outputs.append(model.unet(x, t, context))
        two_different = prism_tokens(echoreel, context, [ref, reference(model, 5)])
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
    assert two_different.shape == (1, 8, echoreel.config.prism.tout_dim)


def test_multi_reference_path_with_one_reference_is_the_plain_prism_call():
    model = tiny_model("lvdm-short-t2v")
    echoreel = tiny_echoreel(model)
    _, _, context = unet_inputs(model)
    ref = reference(model, 0)
    with torch.no_grad():
        direct = echoreel.video_inject_process(torch.cat([context, ref.caption], dim=1), ref.latents)
        assert torch.equal(prism_tokens(echoreel, context, [ref]), direct)


SETTINGS = SamplingSettings(height=16, width=16, frames=4, fps=8, steps=4, cfg=7.5, seed=3)


def guidance(model, echoreel, **kwargs) -> EchoReelGuidance:
    prompt, negative = torch.randn(2, 1, 77, model.preset.unet.context_dim, generator=torch.Generator().manual_seed(4))
    features = action_features(echoreel, prompt, negative, [reference(model, 0)])
    return EchoReelGuidance(echoreel, features, **kwargs), prompt, negative


def test_cached_features_equal_recomputing_the_prism_at_every_call():
    model = tiny_model("lvdm-short-t2v")
    echoreel = tiny_echoreel(model)
    guide, prompt, negative = guidance(model, echoreel)
    with torch.no_grad():
        cached = generate_latents(model, prompt, negative, SETTINGS, echoreel=guide)
        # the official way: the Prism runs inside every UNet call, on each branch's own text
        ref = reference(model, 0)
        attachment = echoreel.attach(model.preset, model.unet)

        def recomputing_unet(x, t, context, fps=None):
            tokens = torch.cat([prism_tokens(echoreel, prompt, [ref]), prism_tokens(echoreel, negative, [ref])])
            attachment.bind(tokens, 4)
            return model.unet(x, t, context, fps=fps)

        generator = torch.Generator().manual_seed(SETTINGS.seed)
        x_T = randn((1, 4, 4, 8, 8), generator)
        denoise = guided_denoiser(recomputing_unet, prompt, negative, SETTINGS.cfg, torch.tensor([8]))
        try:
            recomputed = sample_ddim(denoise, x_T, ddim_schedule(model.schedule, 4, SETTINGS.eta), generator)
        finally:
            attachment.detach()
    assert torch.equal(cached, recomputed)


def test_start_end_window_is_respected():
    model = tiny_model("lvdm-short-t2v")
    echoreel = tiny_echoreel(model)
    calls = []
    handle = echoreel.integration[0].register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            guide, prompt, negative = guidance(model, echoreel, start=0.25, end=0.75)
            windowed = generate_latents(model, prompt, negative, SETTINGS, echoreel=guide)
            assert len(calls) == 2  # steps 1 and 2 of 4 (one batched CFG call each)
            never, _, _ = guidance(model, echoreel, start=0.5, end=0.5)
            base = generate_latents(model, prompt, negative, SETTINGS)
            assert torch.equal(generate_latents(model, prompt, negative, SETTINGS, echoreel=never), base)
            assert not torch.equal(windowed, base)
    finally:
        handle.remove()
    assert all(block.action_integration is None for block in model.unet.modules() if hasattr(block, "action_integration"))


def test_weights_for_another_family_or_size_are_refused():
    lvdm, vc2 = tiny_model("lvdm-short-t2v"), tiny_model("videocrafter2-t2v-512")
    echoreel = tiny_echoreel(lvdm)
    with pytest.raises(ValueError, match=r"for lvdm \(16|for lvdm .*the model is videocrafter2-t2v-512"):
        echoreel.attach(vc2.preset, vc2.unet)
    wider = dataclasses.replace(lvdm.preset, unet=dataclasses.replace(lvdm.preset.unet, model_channels=64))
    wide = VideoModel(wider)
    with pytest.raises(ValueError, match="the model is lvdm-short-t2v-tiny"):
        echoreel.attach(wide.preset, wide.unet)


def naive_shared_key_attention(q, k, v, heads, table_k, table_v, key_positions):
    """Loops: query row r belongs to sample r // rows and attends to that sample's keys only."""
    batch, n_q, inner = q.shape
    samples, n_k, _ = k.shape
    rows, d = batch // samples, inner // heads
    m = (table_k.shape[0] - 1) // 2
    out = torch.zeros_like(q)
    for r in range(batch):
        s = r // rows
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            for i in range(n_q):
                rel = [max(-m, min(m, int(key_positions[j]) - i)) + m for j in range(n_k)]
                logits = torch.stack([(q[r, i, sl] @ (k[s, j, sl] + table_k[rel[j]])) / d**0.5 for j in range(n_k)])
                w = logits.softmax(0)
                out[r, i, sl] = sum(w[j] * (v[s, j, sl] + table_v[rel[j]]) for j in range(n_k))
    return out


def test_relative_cross_attention_to_reference_frames_matches_loop():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2 * 3, 5, 2 * 4, generator=g, dtype=torch.float64)  # 2 samples x 3 positions, 5 frames
    k, v = (torch.randn(2, 8, 2 * 4, generator=g, dtype=torch.float64) for _ in range(2))  # 2 refs of 4 frames
    tk, tv = (torch.randn(2 * 3 + 1, 4, generator=g, dtype=torch.float64) for _ in range(2))
    positions = torch.arange(8) % 4
    torch.testing.assert_close(
        relative_attention(q, k, v, 2, tk, tv, positions), naive_shared_key_attention(q, k, v, 2, tk, tv, positions)
    )


# ---- files ------------------------------------------------------------------------------------

def official_deepspeed_checkpoint(path: pathlib.Path, model: VideoModel, echoreel: EchoReel) -> dict:
    """The official checkpoint.pt layout: DeepSpeed `module`, keys `_forward_module.`, fp16, whole LVDM."""
    state = {}
    for attribute, prefix in component_prefixes(model.preset).items():
        state.update({prefix + k: v for k, v in getattr(model, attribute).state_dict().items()})
    state.update({"model.diffusion_model." + k: v for k, v in echoreel.official_state_dict().items()})
    state["alphas_cumprod"] = model.schedule.alphas_cumprod
    state = {"_forward_module." + k: v.half() for k, v in state.items()}
    torch.save({"module": state, "global_steps": 1500, "ds_version": "0.9.5", "dp_world_size": 4}, path)
    return state


def test_official_deepspeed_checkpoint_loads_and_converts(tmp_path):
    model = tiny_model("lvdm-short-t2v")
    echoreel = tiny_echoreel(model)
    # the official LVDM is square: give the tiny Prism the square latent its keys describe
    path = tmp_path / "checkpoint.pt"
    official_deepspeed_checkpoint(path, model, echoreel)
    loaded = load_echoreel(path)
    assert loaded.config == echoreel.config
    for key, value in echoreel.official_state_dict().items():
        assert torch.equal(loaded.official_state_dict()[key], value.half().float()), key
    out = tmp_path / "echoreel.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "echoreel_core.convert", str(path), str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "EchoReel weights for lvdm" in result.stdout
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        assert meta["base_family"] == "lvdm" and meta["layers"] == "2" and meta["dtype"] == "float16"
        assert all(k.startswith("video_inject_process.") or ".video_inject_" in k for k in f.keys())
    reloaded = load_echoreel(out)
    for key, value in loaded.official_state_dict().items():
        assert torch.equal(reloaded.official_state_dict()[key], value), key
    # the base model inside the same file still loads as a video model
    base = subprocess.run(
        [sys.executable, "-m", "echoreel_core.convert", str(path), str(tmp_path / "base.safetensors"), "--part", "model"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert base.returncode == 0, base.stderr


def test_position_aware_queries_add_the_grid_code_to_the_normed_tokens():
    """Against a direct computation: the code of token (y, x) is sin/cos of pi*k*x/w and pi*k*y/h."""
    model = tiny_model("videocrafter2-t2v-512")
    echoreel = tiny_echoreel(model, query_positions=True)
    layer, site = echoreel.integration[0], echoreel.config.sites[0]
    g = torch.Generator().manual_seed(3)
    h, w, c = 2, 3, site.channels
    x = torch.randn(2 * h * w, 4, c, generator=g)  # ((b h w), t, c)
    keys, values = (torch.randn(2, 4, c, generator=g) for _ in range(2))
    code = torch.zeros(h * w, c)
    for y in range(h):
        for xx in range(w):
            for j in range(c):
                k, kind = j // 4 % 4 + 1, j % 4
                angle = math.pi * k * (xx / w if kind < 2 else y / h)
                code[y * w + xx, j] = math.sin(angle) if kind % 2 == 0 else math.cos(angle)
    attn = layer.video_inject_attn3_tmp
    q = attn.to_q(layer.video_inject_norm7(x) + code.repeat(2, 1)[:, None])  # sample-major rows, (y, x) inside
    expected = attn.to_out(relative_attention(q, keys, values, attn.heads, attn.relative_position_k.embeddings_table,
                                              attn.relative_position_v.embeddings_table, torch.arange(4)))
    with torch.no_grad():
        torch.testing.assert_close(layer(x, keys, values, torch.arange(4), (h, w)), expected)
    with pytest.raises(ValueError, match=r"need the \(h, w\) grid"):
        layer(x, keys, values, torch.arange(4))


def test_safetensors_round_trip_and_missing_keys(tmp_path):
    model = tiny_model("lvdm-short-t2v")
    echoreel = tiny_echoreel(model, query_positions=True)
    path = save_echoreel(echoreel, tmp_path / "e.safetensors")
    again = load_echoreel(path)
    assert again.config == echoreel.config and again.config.query_positions
    for key, value in echoreel.official_state_dict().items():
        assert torch.equal(again.official_state_dict()[key], value)
    state = {k: v for k, v in echoreel.official_state_dict().items() if "video_inject_norm7" not in k}
    with pytest.raises(CheckpointError, match=r"14 missing: input_blocks\.1\.1\.transformer_blocks\.0\.video_inject_norm7"):
        echoreel.load_official_state_dict(state, "test source")


@pytest.mark.parametrize("drop, expected", [
    ("video_inject_process.", r"the Action Prism is missing \(no video_inject_process\.\* keys\)"),
    ("video_inject_process.input_to_latent.", r"Prism \(video_inject_process\.\*\) lacks video_inject_process\.input_to_latent\.weight\. Expected"),
    ("output_blocks.", r"integration layers exist for 3 of the 7 sites of lvdm-short-t2v-custom; missing at output_blocks\.0\.1\.transformer_blocks\.0"),
])
def test_official_file_with_missing_groups_is_refused_naming_them(tmp_path, drop, expected):
    """An official-layout checkpoint.pt without the Prism, or with only some sites' integration
    layers: refused at load with the missing groups named, not a raw KeyError later."""
    model = tiny_model("lvdm-short-t2v")
    echoreel = tiny_echoreel(model)
    full = tmp_path / "full.pt"
    state = official_deepspeed_checkpoint(full, model, echoreel)
    prefix = "_forward_module.model.diffusion_model."
    kept = {k: v for k, v in state.items() if not k.startswith(prefix + drop)}
    assert len(kept) < len(state)
    path = tmp_path / "checkpoint.pt"
    torch.save({"module": kept}, path)
    with pytest.raises(CheckpointError, match=expected) as error:
        load_echoreel(path)
    assert str(error.value).startswith(f"{path}: incomplete EchoReel weights")


def test_nan_in_the_prism_features_stops_the_run_naming_the_branch():
    from echoreel_core.sampling.ddim import NonFiniteError

    model = tiny_model("videocrafter2-t2v-512")
    echoreel = tiny_echoreel(model)
    context = torch.randn(1, 77, model.preset.unet.context_dim)
    with torch.no_grad():
        echoreel.video_inject_process.video_to_latent.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="features for the prompt branch hold NaN/Inf: the Prism overflowed"):
        action_features(echoreel, context, context, [reference(model, 0)])
    bad = reference(model, 0)
    bad.latents[0, 0, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"reference latents \[0\] already hold NaN/Inf"):
        action_features(tiny_echoreel(model), context, context, [bad])
