"""The Stable Diffusion KL-f8 autoencoder, as VideoCrafter / LVDM / SD use it.

VideoCrafter's video model never sees pixels: it works on the latents of the image autoencoder
from Stable Diffusion, applied to every frame on its own. This file is that autoencoder, written
from scratch in plain PyTorch, with module names that give the official state-dict keys as they
are once the checkpoint prefix `first_stage_model.` is stripped:

    encoder.conv_in, encoder.down.{i}.block.{j}.*, encoder.down.{i}.downsample.conv,
    encoder.mid.{block_1, attn_1, block_2}, encoder.norm_out, encoder.conv_out, quant_conv,
    post_quant_conv, decoder.conv_in, decoder.mid.*, decoder.up.{i}.block.{j}.*,
    decoder.up.{i}.upsample.conv, decoder.norm_out, decoder.conv_out

The full-size model has 248 keys and 83,653,863 parameters. Shapes in comments use
(b, c, t, h, w) for videos and (n, c, h, w) for frames (n = b * t). Its layers come from an
operations namespace with a storage dtype and device, its mid attention from an attention
callable (models/ops.py); every block takes the `factory` that carries them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .attention import AttentionFn
from .ops import CoreModel, Factory, compute_dtype, module_device


@dataclass(frozen=True)
class AutoencoderConfig:
    ch: int = 128  # channels of the first (highest-resolution) level
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)  # channel multiplier per level; len-1 halvings
    num_res_blocks: int = 2  # encoder blocks per level (the decoder has one more)
    z_channels: int = 4  # channels between encoder/decoder and the quant convs
    embed_dim: int = 4  # latent channels the diffusion model sees
    in_channels: int = 3
    out_ch: int = 3
    scale_factor: float = 0.18215  # SD's latent scaling, to give latents about unit variance
    groups: int = 32  # GroupNorm groups; a field only so that tiny test configs can exist


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def norm(channels: int, groups: int, factory: Factory) -> nn.Module:
    return factory.group_norm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """norm-swish-conv twice plus a skip; a 1x1 `nin_shortcut` only where channels change.

    The SD autoencoder has no timestep embedding and its dropout is 0, so neither appears here.
    """

    def __init__(self, in_ch: int, out_ch: int, groups: int, factory: Factory | None = None):
        super().__init__()
        f = factory or Factory()
        self.norm1 = norm(in_ch, groups, f)
        self.conv1 = f.conv(2, in_ch, out_ch, 3, padding=1)
        self.norm2 = norm(out_ch, groups, f)
        self.conv2 = f.conv(2, out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = f.conv(2, in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, in_ch, h, w) -> (n, out_ch, h, w)
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all h*w positions, used once in each `mid`.

    The projections are 1x1 convs (that is what the checkpoint stores). The official code does
    softmax(q k^T * c**-0.5) v with bmm; SDPA with its default scale d**-0.5 (d = c for one head)
    is the same math and avoids materialising the (h*w, h*w) matrix where a fused kernel exists.
    """

    def __init__(self, ch: int, groups: int, factory: Factory | None = None):
        super().__init__()
        f = factory or Factory()
        self.attention_fn = f.attention
        self.norm = norm(ch, groups, f)
        self.q = f.conv(2, ch, ch, 1)
        self.k = f.conv(2, ch, ch, 1)
        self.v = f.conv(2, ch, ch, 1)
        self.proj_out = f.conv(2, ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, c, h, w) -> (n, c, h, w)
        n, c, h, w = x.shape
        x_ = self.norm(x)
        # (n, c, h, w) -> (n, h*w, c): one head whose width is all c channels
        q, k, v = (rearrange(f(x_), "n c h w -> n (h w) c") for f in (self.q, self.k, self.v))
        out = rearrange(self.attention_fn(q, k, v, 1), "n (h w) c -> n c h w", h=h, w=w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after a (0, 1, 0, 1) zero pad: SD pads right/bottom only, so the
    weights expect that asymmetric alignment (a symmetric padding=1 would shift the grid)."""

    def __init__(self, ch: int, factory: Factory | None = None):
        super().__init__()
        self.conv = (factory or Factory()).conv(2, ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, c, h, w) -> (n, c, h/2, w/2)
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, ch: int, factory: Factory | None = None):
        super().__init__()
        self.conv = (factory or Factory()).conv(2, ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, c, h, w) -> (n, c, 2h, 2w)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    """resnet -> attention -> resnet at the lowest resolution (the only attention in the AE)."""

    def __init__(self, ch: int, groups: int, factory: Factory | None = None):
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, groups, factory)
        self.attn_1 = AttnBlock(ch, groups, factory)
        self.block_2 = ResnetBlock(ch, ch, groups, factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution level: a list of resnet blocks and an optional resampler.

    The resampler attribute is `downsample` in the encoder and `upsample` in the decoder, which
    is what gives the official key names."""

    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, groups: int, factory: Factory | None = None):
        super().__init__()
        chans = [in_ch] + [out_ch] * n_blocks
        self.block = nn.ModuleList(ResnetBlock(a, b, groups, factory) for a, b in zip(chans, chans[1:]))


class Encoder(nn.Module):
    """(n, in_channels, H, W) -> (n, 2 * z_channels, H/f, W/f): mean and logvar stacked."""

    def __init__(self, cfg: AutoencoderConfig, factory: Factory | None = None):
        super().__init__()
        f = factory or Factory()
        chans = [cfg.ch * m for m in (1,) + tuple(cfg.ch_mult)]  # input channels of each level
        self.conv_in = f.conv(2, cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        for i in range(len(cfg.ch_mult)):
            level = Level(chans[i], chans[i + 1], cfg.num_res_blocks, cfg.groups, f)
            if i != len(cfg.ch_mult) - 1:  # no halving after the last level
                level.downsample = Downsample(chans[i + 1], f)
            self.down.append(level)
        self.mid = Mid(chans[-1], cfg.groups, f)
        self.norm_out = norm(chans[-1], cfg.groups, f)
        self.conv_out = f.conv(2, chans[-1], 2 * cfg.z_channels, 3, padding=1)  # double_z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """(n, z_channels, h, w) -> (n, out_ch, h*f, w*f).

    `up` is indexed like the encoder's `down` (index 0 = highest resolution, ch * ch_mult[0]
    channels) although it runs from the last index to the first; SD builds it reversed and
    prepends, and the checkpoint keys follow that order."""

    def __init__(self, cfg: AutoencoderConfig, factory: Factory | None = None):
        super().__init__()
        f = factory or Factory()
        n_levels = len(cfg.ch_mult)
        ch_top = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = f.conv(2, cfg.z_channels, ch_top, 3, padding=1)
        self.mid = Mid(ch_top, cfg.groups, f)
        levels = []
        in_ch = ch_top
        for i in reversed(range(n_levels)):
            out_ch = cfg.ch * cfg.ch_mult[i]
            level = Level(in_ch, out_ch, cfg.num_res_blocks + 1, cfg.groups, f)
            if i != 0:  # no doubling after the highest-resolution level
                level.upsample = Upsample(out_ch, f)
            levels.insert(0, level)
            in_ch = out_ch
        self.up = nn.ModuleList(levels)
        self.norm_out = norm(in_ch, cfg.groups, f)
        self.conv_out = f.conv(2, in_ch, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class AutoencoderKL(CoreModel):
    """The KL autoencoder plus the per-frame video wrappers VideoCrafter uses.

    Frame methods speak UNSCALED latents (what the decoder consumes); video methods speak SCALED
    latents (scale_factor * z, what the diffusion model consumes). Inputs are moved to the
    weights' device and the compute dtype (ops.compute_dtype), so a video may stay on the CPU while
    chunks run on the GPU. operations, dtype, device, attention: as the UNets (models/ops.py).
    """

    def __init__(self, config: AutoencoderConfig, dtype: torch.dtype | None = None, device=None,
                 operations=None, attention: AttentionFn | None = None):
        super().__init__()
        self.config = config
        f = self._factory(operations, dtype, device, attention)
        self.encoder = Encoder(config, f)
        self.decoder = Decoder(config, f)
        self.quant_conv = f.conv(2, 2 * config.z_channels, 2 * config.embed_dim, 1)
        self.post_quant_conv = f.conv(2, config.embed_dim, config.z_channels, 1)
        self._finish(operations)

    @property
    def downscale_factor(self) -> int:
        return 2 ** (len(self.config.ch_mult) - 1)

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=module_device(self), dtype=compute_dtype(self, x))

    def encode_frames(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 3, H, W) in [-1, 1] -> (mean, logvar), each (n, embed_dim, H/f, W/f).

        logvar is clamped to [-30, 20] as SD's DiagonalGaussianDistribution does."""
        moments = self.quant_conv(self.encoder(self._cast(x)))  # (n, 2 * embed_dim, h, w)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        """(n, embed_dim, h, w) unscaled latents -> (n, 3, h*f, w*f), not clamped."""
        return self.decoder(self.post_quant_conv(self._cast(z)))

    def encode_video(
        self,
        video: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = True,
        chunk_size: int = 16,
    ) -> torch.Tensor:
        """(b, 3, t, H, W) in [-1, 1] -> scaled latents (b, embed_dim, t, H/f, W/f).

        Frames go through the encoder `chunk_size` at a time to bound memory. The posterior
        noise is drawn once, for the whole latent shape, in float32 on the generator's device
        (the CPU when there is none, as the official code does), so the result does not depend
        on chunk_size or on the device the model runs on."""
        b, _, t, _, _ = video.shape
        frames = rearrange(video, "b c t h w -> (b t) c h w")
        moments = [self.encode_frames(chunk) for chunk in frames.split(chunk_size)]
        mean = torch.cat([m for m, _ in moments])  # (b*t, embed_dim, h, w)
        mean = rearrange(mean, "(b t) c h w -> b c t h w", b=b, t=t)
        if not sample:
            return self.config.scale_factor * mean
        logvar = torch.cat([lv for _, lv in moments])
        logvar = rearrange(logvar, "(b t) c h w -> b c t h w", b=b, t=t)
        # drawn frames-as-batch, ((b t), c, h, w), as the official encoder draws it, so that a
        # seed gives the official sample
        noise = torch.randn(
            (b * t, *mean.shape[1:2], *mean.shape[3:]),
            generator=generator,
            device=generator.device if generator is not None else "cpu",
            dtype=torch.float32,
        )
        noise = rearrange(noise, "(b t) c h w -> b c t h w", b=b).to(device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * logvar) * noise
        return self.config.scale_factor * z

    def decode_video(self, latents: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
        """Scaled latents (b, embed_dim, t, h, w) -> video (b, 3, t, h*f, w*f), not clamped.

        Each frame is decoded on its own (the AE is an image model), `chunk_size` at a time."""
        b, _, t, _, _ = latents.shape
        z = (1.0 / self.config.scale_factor) * latents  # multiply by 1/s, as the official code
        z = rearrange(z, "b c t h w -> (b t) c h w")
        frames = torch.cat([self.decode_frames(chunk) for chunk in z.split(chunk_size)])
        return rearrange(frames, "(b t) c h w -> b c t h w", b=b, t=t)
