"""Decoded samples -> the trained module's tensors, with the frozen encoders' outputs cached.

Each clip's VAE posterior (mean, log-variance), each text's context and, for I2V, the target's
image tokens come from the on-disk cache when the loader found them there, or are encoded now and
put there (`data.cache=true`). A sample's randomness (its timestep, its noise and the posterior
samples of its two clips) comes from a generator seeded by its position in the global sample
stream, so it is the same on any rank and after a resume. Skipped entries and short-video notes
that the loader reports are logged once each and kept (the checkpoint saves the skipped ones).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from einops import rearrange
from omegaconf import DictConfig

from ..loading.checkpoints import DTYPES
from ..models.video_model import VideoModel
from .data import CacheKeys, Clip, Sample, Skip, TensorCache, fingerprint
from .distributed import sample_seed

log = logging.getLogger("echoreel_core.train")


def data_cache(cfg: DictConfig, model: VideoModel, out: Path) -> tuple[TensorCache | None, CacheKeys | None]:
    """The cache of encoder outputs and what its keys hash beyond the file (the encoders' weights),
    or (None, None) when `data.cache` is off."""
    if not cfg.data.cache:
        return None, None
    image = fingerprint(model.image_encoder) + fingerprint(model.resampler) if model.preset.is_i2v else None
    keys = CacheKeys(fingerprint(model.vae), fingerprint(model.text_encoder), image)
    return TensorCache(cfg.data.cache_dir or out / "cache"), keys


class Batches:
    """Samples -> {z0, reference, timesteps, noise, prompt, caption, context, fps} on the device."""

    def __init__(self, cfg: DictConfig, model: VideoModel, device: torch.device, cache: TensorCache | None = None,
                 keys: CacheKeys | None = None):
        self.cfg, self.model, self.device, self.cache, self.keys = cfg, model, device, cache, keys
        self.fps = cfg.model.fps or model.preset.fps
        self.skipped: dict[int, Skip] = {}
        self.noted: set[str] = set()

    def prepare(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        """The TrainModule's tensors for these samples; draws each sample's randomness."""
        self.report(samples)
        rows = {k: [] for k in ("z0", "reference", "timesteps", "noise", "prompt", "caption", "context")}
        first, last = self.cfg.train.timesteps
        for s in samples:
            generator = torch.Generator().manual_seed(sample_seed(self.cfg.train.seed, s.position))
            z0 = self.posterior_sample(*self.moments(s.target), generator)  # (c, t, h, w)
            rows["z0"].append(z0)
            rows["reference"].append(self.posterior_sample(*self.moments(s.reference), generator))
            rows["timesteps"].append(torch.randint(first, last, (), generator=generator))
            rows["noise"].append(torch.randn(z0.shape, generator=generator).to(z0.device))
            prompt = self.text(s.prompt, s.texts)
            rows["prompt"].append(prompt)
            rows["caption"].append(self.text(s.caption, s.texts))
            rows["context"].append(torch.cat([prompt, self.image_tokens(s.target)]) if self.model.preset.is_i2v else prompt)
        batch = {k: torch.stack(v).to(self.device) for k, v in rows.items()}
        batch["fps"] = torch.full((len(samples),), self.fps, dtype=torch.long, device=self.device)
        return batch

    def report(self, samples: list[Sample]) -> None:
        """Log each newly skipped entry and each short-video note once."""
        for s in samples:
            for skip in s.skips:
                if skip.index not in self.skipped:
                    self.skipped[skip.index] = skip
                    log.warning(skip.message())
            for note in s.notes:
                if note not in self.noted:
                    self.noted.add(note)
                    log.warning(note)

    @torch.no_grad()
    def moments(self, clip: Clip) -> tuple[torch.Tensor, torch.Tensor]:
        """A clip's VAE posterior (mean, logvar), each (c, t, h, w) float32: cached, or encoded now."""
        if clip.cached is not None:
            return clip.cached["mean"].to(self.device, torch.float32), clip.cached["logvar"].to(self.device, torch.float32)
        frames = rearrange(clip.pixels, "c t h w -> t c h w")
        moments = [self.model.vae.encode_frames(chunk) for chunk in frames.split(16)]  # as encode_video
        mean = torch.cat([m for m, _ in moments]).float().permute(1, 0, 2, 3)  # (c, t, h, w)
        logvar = torch.cat([lv for _, lv in moments]).float().permute(1, 0, 2, 3)
        if clip.key is not None:
            dtype = DTYPES[self.cfg.data.cache_dtype]
            self.cache.put("video", clip.key, {"mean": mean.to(dtype), "logvar": logvar.to(dtype)})
            if self.cfg.data.cache_dtype != "fp32":  # train on what later epochs will read back
                mean, logvar = mean.to(dtype).float(), logvar.to(dtype).float()
        return mean, logvar

    @torch.no_grad()
    def image_tokens(self, clip: Clip) -> torch.Tensor:
        """I2V: the CLIP image tokens (16, D) of the target's first frame."""
        if clip.cached is not None:
            return clip.cached["image"].to(self.device, self.model.dtype)
        tokens = self.model.encode_image(clip.pixels[:, 0][None])[0]  # (3, H, W) frame -> (16, D)
        if clip.key is not None:
            self.cache.put("image", self.keys.image_key(clip.key), {"image": tokens})
        return tokens

    @torch.no_grad()
    def text(self, text: str, cached: dict[str, torch.Tensor]) -> torch.Tensor:
        """A prompt's text context (77, D): cached, or encoded now (one text per call, as cached)."""
        if text in cached:
            return cached[text].to(self.device, self.model.dtype)
        context = self.model.encode_text([text])[0]
        if self.cache is not None:
            self.cache.put("text", self.keys.text_key(text), {"context": context})
        return context

    def posterior_sample(self, mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """0.18215 * (mean + std * noise), the noise drawn frames-as-batch (t, c, h, w) as encode_video."""
        c, t, h, w = mean.shape
        noise = torch.randn((t, c, h, w), generator=generator).permute(1, 0, 2, 3).to(mean.device)
        return self.model.vae.config.scale_factor * (mean + torch.exp(0.5 * logvar) * noise)
