"""UNets of every family: official key sets and sizes, tiny forward passes, attention references."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

from echoreel_core.models.attention import relative_attention, sdpa_attention
from echoreel_core.models.layers import Attention
from echoreel_core.models.video_model import VideoModel, component_prefixes
from echoreel_core.pipelines.generate import guided_denoiser
from echoreel_core.models.presets import PRESETS

# Official sizes (videocrafter.md §1.8, §2, §4; echoreel-official.md §3.3): keys, parameters.
VAE = (248, 83_653_863)
OPENCLIP_TEXT = (294, 354_032_641)
OFFICIAL = {
    "videocrafter1-t2v-512": {"unet": (1196, 1_144_485_956), "vae": VAE, "text_encoder": OPENCLIP_TEXT},
    "videocrafter1-t2v-1024": {"unet": (1200, 1_146_536_516), "vae": VAE, "text_encoder": OPENCLIP_TEXT},
    "videocrafter2-t2v-512": {"unet": (1484, 1_413_284_420), "vae": VAE, "text_encoder": OPENCLIP_TEXT},
    "videocrafter1-i2v-512": {
        "unet": (1516, 1_438_843_460),
        "vae": VAE,
        "text_encoder": OPENCLIP_TEXT,
        "resampler": (51, 48_541_696),
        # the 683,800,065-parameter embedder minus its unused text-side leftovers (51,723,265)
        "image_encoder": (None, 632_076_800),
    },
    # the full EchoReel UNet has 2254 keys, 1280 of them EchoReel's: 974 base keys
    "lvdm-short-t2v": {"unet": (974, 958_924_964), "vae": VAE, "text_encoder": (196, 123_060_480)},
}

SPOT_SHAPES = {
    "videocrafter2-t2v-512": {
        "input_blocks.1.0.temopral_conv.conv1.2.weight": (320, 320, 3, 1, 1),
        "input_blocks.1.0.temopral_conv.conv4.3.weight": (320, 320, 3, 1, 1),
        "init_attn.0.proj_in.weight": (512, 320, 1),
        "init_attn.0.transformer_blocks.0.ff.net.0.proj.weight": (4096, 512),
        "input_blocks.1.2.transformer_blocks.0.attn2.to_k.weight": (320, 320),
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        "output_blocks.5.3.conv.weight": (1280, 1280, 3, 3),
        "fps_embedding.2.weight": (1280, 1280),
    },
    "videocrafter1-i2v-512": {"input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip.weight": (320, 1024)},
    "videocrafter1-t2v-512": {
        "input_blocks.1.2.transformer_blocks.0.attn2.relative_position_k.embeddings_table": (33, 64),
        "init_attn.0.transformer_blocks.0.attn1.relative_position_v.embeddings_table": (33, 64),
    },
    "lvdm-short-t2v": {
        "input_blocks.0.0.weight": (320, 4, 1, 3, 3),
        "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1, 1),
        "input_blocks.1.1.transformer_blocks.0.attn1_tmp.relative_position_k.embeddings_table": (33, 40),
        "middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
        "input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1, 1),
    },
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_full_size_keys_and_parameters_match_official(name):
    with torch.device("meta"):
        model = VideoModel(PRESETS[name])
    assert set(component_prefixes(model.preset)) == set(OFFICIAL[name])
    for attribute, (keys, params) in OFFICIAL[name].items():
        state = getattr(model, attribute).state_dict()
        if keys is not None:
            assert len(state) == keys, attribute
        assert sum(v.numel() for v in state.values()) == params, attribute
    unet = model.unet.state_dict()
    for key, shape in SPOT_SHAPES.get(name, {}).items():
        assert tuple(unet[key].shape) == shape, key



def _inputs(model: VideoModel, b: int = 2, t: int = 4):
    g = torch.Generator().manual_seed(1)
    cfg = model.preset.unet
    x = torch.randn(b, 4, t, 8, 8, generator=g)
    tokens = 77 + (model.preset.resampler.num_queries if model.preset.is_i2v else 0)
    context = torch.randn(b, tokens, cfg.context_dim, generator=g)
    return x, torch.tensor([981, 501][:b]), context


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_tiny_forward_shape_determinism_and_batching(name):
    model = tiny_model(name)
    x, t, context = _inputs(model)
    fps = torch.tensor([28, 8])
    with torch.no_grad():
        out = model.unet(x, t, context, fps=fps)
        again = model.unet(x, t, context, fps=fps)
        single = model.unet(x[1:], t[1:], context[1:], fps=fps[1:])
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert out.std() > 1e-3
    assert torch.equal(out, again)
    torch.testing.assert_close(out[1:], single, atol=1e-5, rtol=1e-5)  # samples do not interact


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_batched_cfg_equals_two_official_calls(name):
    model = tiny_model(name)
    x, t, context = _inputs(model, b=1)
    cond, uncond = context, torch.randn_like(context)
    fps = torch.tensor([8])
    with torch.no_grad():
        eps_c = model.unet(x, t, cond, fps=fps)
        eps_u = model.unet(x, t, uncond, fps=fps)
        expected = eps_u + 7.5 * (eps_c - eps_u)
        batched = guided_denoiser(model.unet, cond, uncond, 7.5, fps)(x, t)
        cond_only = guided_denoiser(model.unet, cond, uncond, 1.0, fps)(x, t)
    torch.testing.assert_close(batched, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(cond_only, eps_c)


def test_fps_conditioning_changes_the_output_only_when_configured():
    vc2, vc1 = tiny_model("videocrafter2-t2v-512"), tiny_model("videocrafter1-t2v-512")
    for model, should_change in ((vc2, True), (vc1, False)):
        x, t, context = _inputs(model, b=1)
        with torch.no_grad():
            a = model.unet(x, t, context, fps=8)
            b = model.unet(x, t, context, fps=torch.tensor([28]))
        assert (not torch.equal(a, b)) == should_change
    with pytest.raises(ValueError, match="fps"):
        vc2.unet(*_inputs(vc2, b=1))


def test_frame_order_reaches_the_output():
    """A model that treated frames independently would commute with reversing them; VideoCrafter2
    (no relative positions) must not, through its temporal convolutions."""
    model = tiny_model("videocrafter2-t2v-512")
    x, t, context = _inputs(model, b=1)
    with torch.no_grad():
        out = model.unet(x, t, context, fps=8)
        flipped = model.unet(x.flip(2), t, context, fps=8).flip(2)
    assert (out - flipped).abs().max() > 1e-3


def naive_attention(q, k, v, heads):
    b, n, inner = q.shape
    d = inner // heads
    out = torch.zeros_like(q)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / d**0.5, dim=-1)
        out[..., sl] = weights @ v[..., sl]
    return out


def naive_relative_attention(q, k, v, heads, table_k, table_v):
    """Loop over queries and keys, straight from the Shaw et al. formulas."""
    b, n_q, inner = q.shape
    n_k = k.shape[1]
    d = inner // heads
    max_distance = (table_k.shape[0] - 1) // 2
    out = torch.zeros_like(q)
    for bi in range(b):
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            for i in range(n_q):
                logits = torch.empty(n_k, dtype=q.dtype)
                for j in range(n_k):
                    r = max(-max_distance, min(max_distance, j - i)) + max_distance
                    logits[j] = (q[bi, i, sl] @ (k[bi, j, sl] + table_k[r])) / d**0.5
                w = torch.softmax(logits, 0)
                for j in range(n_k):
                    r = max(-max_distance, min(max_distance, j - i)) + max_distance
                    out[bi, i, sl] += w[j] * (v[bi, j, sl] + table_v[r])
    return out


def test_sdpa_attention_matches_naive_softmax():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, n, 4 * 8, generator=g, dtype=torch.float64) for n in (5, 7, 7))
    torch.testing.assert_close(sdpa_attention(q, k, v, 4), naive_attention(q, k, v, 4))


@pytest.mark.parametrize("n_q,n_k,max_distance", [(6, 6, 16), (9, 9, 3), (4, 11, 2)])
def test_relative_attention_matches_loop(n_q, n_k, max_distance):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, n_q, 2 * 4, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, n_k, 2 * 4, generator=g, dtype=torch.float64) for _ in range(2))
    table_k, table_v = (torch.randn(2 * max_distance + 1, 4, generator=g, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(
        relative_attention(q, k, v, 2, table_k, table_v),
        naive_relative_attention(q, k, v, 2, table_k, table_v),
    )


def test_image_cross_attention_is_two_softmaxes_summed():
    torch.manual_seed(0)
    layer = Attention(16, 12, heads=2, dim_head=8, image_tokens=True, text_context_len=5).double()
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    context = torch.randn(2, 5 + 4, 12, dtype=torch.float64)
    text, image = context[:, :5], context[:, 5:]
    q = layer.to_q(x)
    expected = naive_attention(q, layer.to_k(text), layer.to_v(text), 2) + naive_attention(
        q, layer.to_k_ip(image), layer.to_v_ip(image), 2
    )
    torch.testing.assert_close(layer(x, context), layer.to_out(expected))
