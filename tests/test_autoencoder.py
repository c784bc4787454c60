"""Tests for the SD KL-f8 autoencoder (echoreel_core.models.autoencoder), tiny configs on CPU."""

import math

import pytest
import torch
import torch.nn.functional as F

from echoreel_core.models.autoencoder import AttnBlock, AutoencoderConfig, AutoencoderKL

TINY = AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, groups=8)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = AutoencoderKL(TINY).eval()
    # Make the encoder's logvar non-trivial so the posterior noise actually matters.
    with torch.no_grad():
        model.quant_conv.bias[TINY.embed_dim :] += 1.0
    return model


def test_full_size_keys_and_shapes():
    with torch.device("meta"):
        model = AutoencoderKL(AutoencoderConfig())
    sd = model.state_dict()
    assert len(sd) == 248
    assert sum(p.numel() for p in model.parameters()) == 83_653_863
    enc = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("encoder.", "quant_conv.")))
    dec = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("decoder.", "post_quant_conv.")))
    assert round(enc / 1e6, 2) == 34.16 and round(dec / 1e6, 2) == 49.49
    expected = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
        "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.2.block.0.nin_shortcut.weight": (512, 256, 1, 1),
        "encoder.down.2.downsample.conv.weight": (512, 512, 3, 3),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.mid.attn_1.proj_out.bias": (512,),
        "encoder.mid.block_2.norm2.weight": (512,),
        "encoder.conv_out.weight": (8, 512, 3, 3),
        "quant_conv.weight": (8, 8, 1, 1),
        "post_quant_conv.weight": (4, 4, 1, 1),
        "decoder.conv_in.weight": (512, 4, 3, 3),
        "decoder.mid.attn_1.k.weight": (512, 512, 1, 1),
        "decoder.up.3.block.2.conv2.weight": (512, 512, 3, 3),
        "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.1.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "decoder.up.0.block.2.conv1.weight": (128, 128, 3, 3),
        "decoder.norm_out.weight": (128,),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    absent = ["encoder.down.3.downsample.conv.weight", "decoder.up.0.upsample.conv.weight",
              "encoder.down.0.block.0.nin_shortcut.weight", "decoder.up.3.block.0.nin_shortcut.weight",
              "decoder.up.0.block.3.conv1.weight", "encoder.down.0.block.2.conv1.weight"]
    for key in absent:
        assert key not in sd, key
    assert AutoencoderKL.downscale_factor.fget(model) == 8


def test_frame_shapes(tiny):
    f = tiny.downscale_factor
    assert f == 2
    x = torch.rand(3, 3, 16, 12) * 2 - 1
    with torch.no_grad():
        mean, logvar = tiny.encode_frames(x)
        assert mean.shape == logvar.shape == (3, 4, 16 // f, 12 // f)
        assert logvar.min() >= -30 and logvar.max() <= 20
        y = tiny.decode_frames(mean)
    assert y.shape == (3, 3, 16, 12)


def test_encode_video_matches_framewise(tiny):
    video = torch.rand(1, 3, 5, 8, 8) * 2 - 1
    with torch.no_grad():
        lat = tiny.encode_video(video, sample=False, chunk_size=1)
        assert lat.shape == (1, 4, 5, 4, 4)
        for i in range(5):
            mean, _ = tiny.encode_frames(video[:, :, i])
            assert torch.equal(lat[:, :, i], TINY.scale_factor * mean)


def test_sample_false_is_scaled_mean(tiny):
    video = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        lat = tiny.encode_video(video, sample=False, chunk_size=16)
        mean, _ = tiny.encode_frames(video.permute(0, 2, 1, 3, 4).reshape(6, 3, 8, 8))
    mean = mean.reshape(2, 3, 4, 4, 4).permute(0, 2, 1, 3, 4)
    assert torch.equal(lat, TINY.scale_factor * mean)


def _batch_independent_encode_frames(x):
    """A stand-in for encode_frames whose every output element depends on its own frame only,
    with no batch-size-dependent kernels, so chunking can be checked bit for bit."""
    m = F.avg_pool2d(torch.cat([x, x[:, :1] * 0.5], dim=1), 2)  # (n, 4, h, w)
    return m, (2.0 * m - 1.0).clamp(-30.0, 20.0)


def test_sampling_independent_of_chunk_size_exact(monkeypatch):
    model = AutoencoderKL(TINY)
    monkeypatch.setattr(model, "encode_frames", _batch_independent_encode_frames)
    video = torch.rand(2, 3, 5, 8, 8) * 2 - 1
    outs = [
        model.encode_video(video, generator=torch.Generator().manual_seed(123), chunk_size=c)
        for c in (1, 3, 4, 16)
    ]
    for out in outs[1:]:
        assert torch.equal(out, outs[0])
    # The noise is one float32 randn draw, frames as batch ((b t), 4, h, w), as the official encoder.
    mean, logvar = _batch_independent_encode_frames(video.permute(0, 2, 1, 3, 4).reshape(10, 3, 8, 8))
    mean = mean.reshape(2, 5, 4, 4, 4).permute(0, 2, 1, 3, 4)
    std = torch.exp(0.5 * logvar).reshape(2, 5, 4, 4, 4).permute(0, 2, 1, 3, 4)
    noise = torch.randn((10, 4, 4, 4), generator=torch.Generator().manual_seed(123))
    noise = noise.reshape(2, 5, 4, 4, 4).permute(0, 2, 1, 3, 4)
    assert torch.equal(outs[0], TINY.scale_factor * (mean + std * noise))


def test_sampling_with_real_model(tiny):
    # CPU conv kernels may round differently for different batch sizes (1 ulp), so across chunk
    # sizes the real model is compared with a tolerance; the exact check is the test above.
    video = torch.rand(2, 3, 5, 8, 8) * 2 - 1
    with torch.no_grad():
        outs = [
            tiny.encode_video(video, generator=torch.Generator().manual_seed(123), chunk_size=c)
            for c in (1, 3, 16)
        ]
        mode = tiny.encode_video(video, sample=False)
        other = tiny.encode_video(video, generator=torch.Generator().manual_seed(7))
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-6, atol=1e-6)
    assert (outs[0] - mode).abs().max() > 1e-2  # noise was really added
    assert (outs[0] - other).abs().max() > 1e-2  # and it follows the seed


def test_decode_video_inverts_scaling(tiny):
    z = torch.randn(2, 4, 3, 4, 4)
    with torch.no_grad():
        video = tiny.decode_video(TINY.scale_factor * z, chunk_size=2)
        assert video.shape == (2, 3, 3, 8, 8)
        for i in range(3):
            ref = tiny.decode_frames(z[:, :, i])
            torch.testing.assert_close(video[:, :, i], ref, rtol=1e-5, atol=1e-5)


def test_mid_attention_matches_naive_reference():
    torch.manual_seed(1)
    c, groups = 16, 4
    block = AttnBlock(c, groups)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.5)
    x = torch.randn(2, c, 5, 3)

    def conv1x1(t, conv):
        return torch.einsum("oi,nil->nol", conv.weight[:, :, 0, 0], t) + conv.bias[None, :, None]

    h = F.group_norm(x, groups, block.norm.weight, block.norm.bias, eps=1e-6).reshape(2, c, 15)
    q, k, v = conv1x1(h, block.q), conv1x1(h, block.k), conv1x1(h, block.v)  # (n, c, l)
    w = torch.softmax(torch.einsum("nci,ncj->nij", q, k) / math.sqrt(c), dim=-1)  # (n, lq, lk)
    out = torch.einsum("nij,ncj->nci", w, v)
    ref = x + conv1x1(out, block.proj_out).reshape(2, c, 5, 3)
    with torch.no_grad():
        got = block(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_strict_load_rejects_missing_key(tiny):
    sd = dict(tiny.state_dict())
    fresh = AutoencoderKL(TINY)
    fresh.load_state_dict(sd, strict=True)  # round trip works
    del sd["decoder.mid.attn_1.proj_out.weight"]
    with pytest.raises(RuntimeError, match="proj_out"):
        AutoencoderKL(TINY).load_state_dict(sd, strict=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights(tiny, dtype):
    model = AutoencoderKL(TINY).to(dtype)
    model.load_state_dict(tiny.state_dict())
    video = torch.rand(1, 3, 2, 8, 8) * 2 - 1
    with torch.no_grad():
        lat = model.encode_video(video, generator=torch.Generator().manual_seed(0))
        out = model.decode_video(lat)
        ref = tiny.decode_video(tiny.encode_video(video, generator=torch.Generator().manual_seed(0)))
    assert lat.dtype == out.dtype == dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)


def test_logvar_is_clamped():
    model = AutoencoderKL(TINY)
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        for shift, bound in ((1e3, 20.0), (-1e3, -30.0)):
            model.quant_conv.bias[TINY.embed_dim :] = shift
            _, logvar = model.encode_frames(x)
            assert torch.all(logvar == bound)


def test_downsample_pads_right_and_bottom_only():
    from echoreel_core.models.autoencoder import Downsample

    down = Downsample(4)
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        got = down(x)
        # Zero row/column appended at the bottom/right; the top-left pixel is a conv tap origin.
        ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2)
        sym = F.conv2d(x, down.conv.weight, down.conv.bias, stride=2, padding=1)
    assert got.shape == (1, 4, 3, 3)
    torch.testing.assert_close(got, ref)
    assert not torch.allclose(got, sym)
