"""Tests of the frozen text/image encoders and the CLIP tokenizer (CPU, tiny configs).

Full-size models are only built on the meta device, to check that their state-dict keys, shapes
and parameter counts are those of the official checkpoints. Numerics are checked on tiny
configs against independent references written here (nn.MultiheadAttention, plain loops).
"""

from __future__ import annotations

import gzip

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from echoreel_core.models import tokenizer as tokenizer_module
from echoreel_core.models.image_encoders import (
    CLIP_MEAN,
    CLIP_STD,
    OpenCLIPVisionConfig,
    OpenCLIPVisionEncoder,
    Resampler,
    ResamplerConfig,
    antialiased_resize,
    gaussian_kernel1d,
)
from echoreel_core.models.text_encoders import (
    CLIPTextConfig,
    CLIPTextEncoder,
    InProjSelfAttention,
    OpenCLIPTextConfig,
    OpenCLIPTextEncoder,
)
from echoreel_core.models.tokenizer import CLIPTokenizer

SOT, EOT = 49406, 49407


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter (LayerNorm and biases included) random non-trivial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2:  # matrices: unit-variance outputs
                p.copy_(noise * p.shape[-1] ** -0.5)
            else:  # LayerNorm scales around 1, biases and embeddings around 0
                p.copy_(noise * 0.2 + (1.0 if name.endswith("norm.weight") or ".ln_" in name or "norm" in name and name.endswith("weight") else 0.0))
    return module.eval()


def openclip_block_keys(prefix: str, width: int, mlp: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.ln_1.weight": (width,),
        f"{prefix}.ln_1.bias": (width,),
        f"{prefix}.attn.in_proj_weight": (3 * width, width),
        f"{prefix}.attn.in_proj_bias": (3 * width,),
        f"{prefix}.attn.out_proj.weight": (width, width),
        f"{prefix}.attn.out_proj.bias": (width,),
        f"{prefix}.ln_2.weight": (width,),
        f"{prefix}.ln_2.bias": (width,),
        f"{prefix}.mlp.c_fc.weight": (mlp, width),
        f"{prefix}.mlp.c_fc.bias": (mlp,),
        f"{prefix}.mlp.c_proj.weight": (width, mlp),
        f"{prefix}.mlp.c_proj.bias": (width,),
    }


# ------------------------------------------------------------------------------------------------
# full-size layouts (meta device)
# ------------------------------------------------------------------------------------------------


def test_openclip_text_full_size_layout():
    with torch.device("meta"):
        model = OpenCLIPTextEncoder(OpenCLIPTextConfig())
    want = {
        "token_embedding.weight": (49408, 1024),
        "positional_embedding": (77, 1024),
        "ln_final.weight": (1024,),
        "ln_final.bias": (1024,),
        "text_projection": (1024, 1024),
        "logit_scale": (),
    }
    for i in range(24):
        want.update(openclip_block_keys(f"transformer.resblocks.{i}", 1024, 4096))
    assert shapes(model) == want
    assert len(want) == 294
    assert n_params(model) == 354_032_641


def test_clip_l_text_full_size_layout():
    with torch.device("meta"):
        model = CLIPTextEncoder(CLIPTextConfig())
    want = {
        "embeddings.token_embedding.weight": (49408, 768),
        "embeddings.position_embedding.weight": (77, 768),
        "final_layer_norm.weight": (768,),
        "final_layer_norm.bias": (768,),
    }
    for i in range(12):
        p = f"encoder.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            want[f"{p}.self_attn.{name}.weight"] = (768, 768)
            want[f"{p}.self_attn.{name}.bias"] = (768,)
        for name in ("layer_norm1", "layer_norm2"):
            want[f"{p}.{name}.weight"] = (768,)
            want[f"{p}.{name}.bias"] = (768,)
        want[f"{p}.mlp.fc1.weight"] = (3072, 768)
        want[f"{p}.mlp.fc1.bias"] = (3072,)
        want[f"{p}.mlp.fc2.weight"] = (768, 3072)
        want[f"{p}.mlp.fc2.bias"] = (768,)
    assert shapes(model) == want  # no embeddings.position_ids buffer
    assert len(want) == 196
    # transformers' CLIPTextModel for openai/clip-vit-large-patch14 has 123,060,480 parameters
    assert n_params(model) == 123_060_480


def test_openclip_vision_full_size_layout():
    with torch.device("meta"):
        model = OpenCLIPVisionEncoder(OpenCLIPVisionConfig())
    want = {
        "conv1.weight": (1280, 3, 14, 14),
        "class_embedding": (1280,),
        "positional_embedding": (257, 1280),
        "ln_pre.weight": (1280,),
        "ln_pre.bias": (1280,),
        "ln_post.weight": (1280,),
        "ln_post.bias": (1280,),
        "proj": (1280, 1024),
    }
    for i in range(32):
        want.update(openclip_block_keys(f"transformer.resblocks.{i}", 1280, 5120))
    assert shapes(model) == want
    assert len(want) == 392
    # open_clip ViT-H-14 `model.visual`: 632,076,800; the I2V embedder (visual + text leftovers) is
    # 683,800,065 = this + token/positional embeddings, ln_final, text_projection, logit_scale.
    assert n_params(model) == 632_076_800
    assert n_params(model) + 49408 * 1024 + 77 * 1024 + 2 * 1024 + 1024 * 1024 + 1 == 683_800_065


def test_resampler_full_size_layout():
    with torch.device("meta"):
        model = Resampler(ResamplerConfig())
    want = {
        "latents": (1, 16, 1024),
        "proj_in.weight": (1024, 1280),
        "proj_in.bias": (1024,),
        "proj_out.weight": (1024, 1024),
        "proj_out.bias": (1024,),
        "norm_out.weight": (1024,),
        "norm_out.bias": (1024,),
    }
    for i in range(4):
        p = f"layers.{i}"
        for name in ("norm1", "norm2"):
            want[f"{p}.0.{name}.weight"] = (1024,)
            want[f"{p}.0.{name}.bias"] = (1024,)
        want[f"{p}.0.to_q.weight"] = (768, 1024)
        want[f"{p}.0.to_kv.weight"] = (1536, 1024)
        want[f"{p}.0.to_out.weight"] = (1024, 768)
        want[f"{p}.1.0.weight"] = (1024,)
        want[f"{p}.1.0.bias"] = (1024,)
        want[f"{p}.1.1.weight"] = (4096, 1024)
        want[f"{p}.1.3.weight"] = (1024, 4096)
    assert shapes(model) == want
    assert len(want) == 51
    assert n_params(model) == 48_541_696


# ------------------------------------------------------------------------------------------------
# tokenizer
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok() -> CLIPTokenizer:
    if tokenizer_module.default_merges_path() is None:
        pytest.skip("open_clip_torch (its BPE file) is not installed")
    return CLIPTokenizer()


def test_tokenizer_known_ids(tok):
    out = tok("a photo of a cat")
    assert out.dtype == torch.long and out.shape == (1, 77)
    assert out[0, :7].tolist() == [SOT, 320, 1125, 539, 320, 2368, EOT]
    assert out[0, 7:].eq(0).all()
    assert tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    assert (tok.sot_token, tok.eot_token, tok.vocab_size) == (SOT, EOT, 49408)
    # cleaning: case, repeated spaces and HTML entities do not change the ids
    assert tok.encode("  A   PHOTO of &amp;amp; a cat ") == tok.encode("a photo of & a cat")
    # with a '<' in the text ftfy leaves entities alone: only the double html.unescape removes them
    assert tok.encode("<b> &amp;amp; x") == tok.encode("<b> & x")
    assert tok.decode(tok.encode("a photo of a cat")).strip() == "a photo of a cat"


def test_tokenizer_truncation_and_padding(tok):
    out = tok(["a " * 100, "cat"], pad_token=EOT)
    assert out.shape == (2, 77)
    assert out[0, 0] == SOT and out[0, 76] == EOT and out[0, 1:76].eq(320).all()
    assert out[1, :3].tolist() == [SOT, 2368, EOT] and out[1, 3:].eq(EOT).all()
    assert tok("cat", context_length=5).tolist() == [[SOT, 2368, EOT, 0, 0]]


def test_tokenizer_merges_txt_source_matches_gz(tok, tmp_path):
    lines = gzip.open(tok.merges_path).read().decode("utf-8").split("\n")[1 : 1 + 48894]
    path = tmp_path / "merges.txt"
    path.write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
    other = CLIPTokenizer(path)
    texts = ["a photo of a cat", "Café naïve 日本語 😀 it's 3.14!", "x" * 500, "&lt;b&gt; don't"]
    assert torch.equal(other(texts), tok(texts))


def test_tokenizer_missing_vocab_names_the_install(monkeypatch):
    monkeypatch.setattr(tokenizer_module, "default_merges_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps open_clip_torch"):
        CLIPTokenizer()


# ------------------------------------------------------------------------------------------------
# text towers
# ------------------------------------------------------------------------------------------------


def reference_mha(attn: InProjSelfAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """nn.MultiheadAttention with the same fused weights: the layout OpenCLIP itself runs."""
    width = x.shape[-1]
    mha = nn.MultiheadAttention(width, attn.heads, batch_first=True)
    mha.load_state_dict(
        {
            "in_proj_weight": attn.in_proj_weight,
            "in_proj_bias": attn.in_proj_bias,
            "out_proj.weight": attn.out_proj.weight,
            "out_proj.bias": attn.out_proj.bias,
        }
    )
    n = x.shape[1]
    mask = torch.full((n, n), float("-inf")).triu(1) if causal else None
    return mha(x, x, x, need_weights=False, attn_mask=mask)[0]


def reference_openclip_tower(blocks, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """OpenCLIP blocks run with nn.MultiheadAttention and explicit GELU MLPs."""
    for b in blocks:
        x = x + reference_mha(b.attn, b.ln_1(x), causal)
        h = b.ln_2(x)
        x = x + F.linear(F.gelu(F.linear(h, b.mlp.c_fc.weight, b.mlp.c_fc.bias)), b.mlp.c_proj.weight, b.mlp.c_proj.bias)
    return x


@pytest.mark.parametrize("causal", [False, True])
def test_inproj_attention_equals_multihead_attention(causal):
    torch.manual_seed(0)
    attn = randomize(InProjSelfAttention(32, 2, causal=causal))
    x = torch.randn(3, 9, 32)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), reference_mha(attn, x, causal), atol=1e-5, rtol=0)


def tiny_openclip_text(**kw) -> OpenCLIPTextEncoder:
    return randomize(OpenCLIPTextEncoder(OpenCLIPTextConfig(width=32, heads=2, layers=3, **kw)))


def tiny_clip_text() -> CLIPTextEncoder:
    return randomize(CLIPTextEncoder(CLIPTextConfig(width=32, heads=2, layers=2, intermediate=64)))


def test_openclip_text_matches_reference_penultimate():
    model = tiny_openclip_text()
    tokens = torch.randint(0, 49408, (2, 77))
    with torch.no_grad():
        x = model.token_embedding(tokens) + model.positional_embedding
        want = model.ln_final(reference_openclip_tower(model.transformer.resblocks[:2], x, causal=True))
        torch.testing.assert_close(model(tokens), want, atol=1e-5, rtol=0)


def test_openclip_text_skips_last_block():
    model = tiny_openclip_text()
    tokens = torch.randint(0, 49408, (2, 77))
    with torch.no_grad():
        before = model(tokens)
        for p in model.transformer.resblocks[-1].parameters():
            p.add_(1.0)
        assert torch.equal(model(tokens), before)  # last block never runs
        for p in model.transformer.resblocks[-2].parameters():
            p.add_(1.0)
        assert not torch.allclose(model(tokens), before)
    full = tiny_openclip_text(skip_last_layers=0)
    with torch.no_grad():
        before = full(tokens)
        full.transformer.resblocks[-1].mlp.c_proj.bias.add_(torch.randn(32))  # not uniform: ln_final would hide that
        assert not torch.allclose(full(tokens), before)


@pytest.mark.parametrize("make", [tiny_openclip_text, tiny_clip_text])
def test_text_towers_are_causal(make):
    model = make()
    tokens = torch.randint(0, 49408, (2, 77))
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 49408
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert a.shape == (2, 77, 32)
    torch.testing.assert_close(a[:, :10], b[:, :10], atol=1e-6, rtol=0)
    assert (a[:, 10:] - b[:, 10:]).abs().amax(dim=-1).gt(1e-4).all()


def test_clip_text_matches_reference():
    """HF CLIPTextModel's math written out: pre-LN, quick_gelu, causal additive mask."""
    model = tiny_clip_text()
    tokens = torch.randint(0, 49408, (2, 77))
    with torch.no_grad():
        emb = model.embeddings
        x = emb.token_embedding(tokens) + emb.position_embedding(torch.arange(77))
        mask = torch.full((77, 77), torch.finfo(x.dtype).min).triu(1)
        for layer in model.encoder.layers:
            a = layer.self_attn
            h = layer.layer_norm1(x)
            q, k, v = (p(h).view(2, 77, 2, 16).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj))
            w = ((q * 16**-0.5) @ k.transpose(-1, -2) + mask).softmax(-1)
            x = x + a.out_proj((w @ v).transpose(1, 2).reshape(2, 77, 32))
            h = layer.mlp.fc1(layer.layer_norm2(x))
            x = x + layer.mlp.fc2(h * torch.sigmoid(1.702 * h))
        torch.testing.assert_close(model(tokens), model.final_layer_norm(x), atol=1e-5, rtol=0)


def test_text_encode_uses_each_towers_pad_token(tok):
    texts = ["a photo of a cat", "dog"]
    openclip, clip = tiny_openclip_text(), tiny_clip_text()
    with torch.no_grad():
        torch.testing.assert_close(openclip.encode(texts, tok), openclip(tok(texts, pad_token=0)))
        torch.testing.assert_close(clip.encode(texts, tok), clip(tok(texts, pad_token=EOT)))
        assert not torch.allclose(clip.encode(texts, tok), clip(tok(texts, pad_token=0)))


# ------------------------------------------------------------------------------------------------
# vision tower and preprocessing
# ------------------------------------------------------------------------------------------------


def tiny_vision() -> OpenCLIPVisionEncoder:
    return randomize(OpenCLIPVisionEncoder(OpenCLIPVisionConfig(width=32, layers=2, heads=2, image_size=28)))


def test_vision_tower_matches_reference():
    model = tiny_vision()
    image = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        patches = [
            image[:, :, 14 * i : 14 * i + 14, 14 * j : 14 * j + 14].reshape(2, -1) for i in range(2) for j in range(2)
        ]
        x = torch.stack(patches, dim=1) @ model.conv1.weight.reshape(32, -1).T  # (b, 4, c), row-major patches
        x = torch.cat([model.class_embedding.expand(2, 1, 32), x], dim=1) + model.positional_embedding
        want = reference_openclip_tower(model.transformer.resblocks, model.ln_pre(x), causal=False)
        got = model(image)
    assert got.shape == (2, 5, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_vision_is_not_causal():
    model = tiny_vision()
    image = torch.randn(1, 3, 28, 28)
    changed = image.clone()
    changed[..., 14:, 14:] += 1.0  # the last patch only
    with torch.no_grad():
        assert not torch.allclose(model(image)[:, 0], model(changed)[:, 0])


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


def test_preprocess_224_only_normalises():
    model = OpenCLIPVisionEncoder(OpenCLIPVisionConfig(width=32, layers=1, heads=2))
    x = torch.rand(2, 3, 224, 224) * 2 - 1
    torch.testing.assert_close(model.preprocess(x), normalise(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [(256, 320), (100, 150), (500, 120)])
def test_preprocess_resizes_to_224(size):
    model = OpenCLIPVisionEncoder(OpenCLIPVisionConfig(width=32, layers=1, heads=2))
    x = torch.rand(2, 3, *size) * 2 - 1
    out = model.preprocess(x)
    assert out.shape == (2, 3, 224, 224)
    flat = torch.full((1, 3, *size), 0.3)  # blur and bicubic keep a constant image constant
    torch.testing.assert_close(model.preprocess(flat), normalise(torch.full((1, 3, 224, 224), 0.3)), atol=1e-5, rtol=0)


def test_gaussian_kernel():
    for size, sigma in [(3, 0.001), (5, 1.5), (35, 8.6)]:
        k = gaussian_kernel1d(size, sigma)
        assert k.shape == (size,) and abs(k.sum().item() - 1) < 1e-6
        assert torch.equal(k, k.flip(0)) and k.argmax().item() == size // 2
    # values from kornia's get_gaussian_kernel1d documentation
    torch.testing.assert_close(gaussian_kernel1d(5, 1.5), torch.tensor([0.1201, 0.2339, 0.2921, 0.2339, 0.1201]), atol=1e-4, rtol=0)
    torch.testing.assert_close(gaussian_kernel1d(3, 2.5), torch.tensor([0.3243, 0.3513, 0.3243]), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "size, ks",
    [
        ((448, 300), (3, 3)),  # sigmas (0.5, 0.17): max(int(4 sigma), 3) = 3
        ((896, 224), (7, 3)),  # sigmas (1.5, 0.001): int(6.0) = 6 made odd = 7; the unscaled axis still gets 3 taps
    ],
)
def test_antialiased_resize_blurs_before_downscaling(size, ks):
    """Against the kornia recipe built by hand: 2-D kernel, reflect pad, then bicubic."""
    x = torch.rand(1, 2, *size)
    sy, sx = max((size[0] / 224 - 1) / 2, 0.001), max((size[1] / 224 - 1) / 2, 0.001)
    (ky, kx) = ks
    k2 = gaussian_kernel1d(ky, sy)[:, None] * gaussian_kernel1d(kx, sx)[None, :]
    padded = F.pad(x, (kx // 2, kx // 2, ky // 2, ky // 2), mode="reflect")
    blurred = F.conv2d(padded, k2.expand(2, 1, ky, kx), groups=2)
    want = F.interpolate(blurred, size=(224, 224), mode="bicubic", align_corners=True)
    torch.testing.assert_close(antialiased_resize(x, (224, 224)), want, atol=1e-5, rtol=0)
    plain = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=True)
    assert not torch.allclose(antialiased_resize(x, (224, 224)), plain, atol=1e-3)
    up = torch.rand(1, 2, 100, 150)  # upscaling: no blur at all
    torch.testing.assert_close(
        antialiased_resize(up, (224, 224)), F.interpolate(up, size=(224, 224), mode="bicubic", align_corners=True)
    )


# ------------------------------------------------------------------------------------------------
# Resampler
# ------------------------------------------------------------------------------------------------


def reference_resampler(model: Resampler, tokens: torch.Tensor) -> torch.Tensor:
    """The perceiver written with per-sample, per-head loops."""
    c = model.config
    outs = []
    for feats in tokens:  # (n, e)
        x = model.proj_in(feats)  # (n, dim)
        lat = model.latents[0]  # (m, dim)
        for attn, ff in model.layers:
            xn, ln = attn.norm1(x), attn.norm2(lat)
            q = attn.to_q(ln)
            k, v = attn.to_kv(torch.cat([xn, ln])).split(c.heads * c.dim_head, dim=-1)
            heads = []
            for h in range(c.heads):
                s = slice(h * c.dim_head, (h + 1) * c.dim_head)
                w = torch.einsum("id,jd->ij", q[:, s], k[:, s]) / c.dim_head**0.5
                heads.append(w.softmax(-1) @ v[:, s])
            lat = lat + attn.to_out(torch.cat(heads, dim=-1))
            lat = lat + ff[3](F.gelu(ff[1](ff[0](lat))))
        outs.append(model.norm_out(model.proj_out(lat)))
    return torch.stack(outs)


def test_resampler_matches_reference():
    cfg = ResamplerConfig(dim=32, depth=2, dim_head=8, heads=3, num_queries=4, embedding_dim=24, output_dim=20, ff_mult=2)
    model = randomize(Resampler(cfg))
    tokens = torch.randn(2, 7, 24)
    with torch.no_grad():
        got = model(tokens)
        assert got.shape == (2, 4, 20)
        torch.testing.assert_close(got, reference_resampler(model, tokens), atol=1e-5, rtol=0)
