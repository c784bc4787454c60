"""What trains and how one optimizer step updates it.

`TrainModule` is the EchoReel parameters plus the loss (eps-prediction MSE), one module for DDP;
the frozen base model stays outside its module tree. `Learner` holds it with AdamW, the warmup
schedule and the GradScaler, and `update()` is one optimizer step over the micro-batches: tensor
work only, so that the memory estimate (memory.py) runs exactly this step on fake tensors.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig

from ..echoreel.weights import EchoReel, EchoReelConfig, load_echoreel
from ..models import unet_lvdm, unet_videocrafter
from ..models.video_model import VideoModel
from .batches import Batches
from .config import ConfigError
from .data import Sample
from .optim import build_adamw

DEAD_PARAMETERS = ("latent_to_S.", ".video_inject_attn3.", ".video_inject_norm6.")  # official, never computed


class TrainModule(nn.Module):
    """The EchoReel parameters plus the loss, one module for DDP.

    The frozen base model is kept outside the module tree (DDP would otherwise broadcast it and
    track it); the integration layers reach the UNet through an Attachment made once."""

    def __init__(self, echoreel: EchoReel, model: VideoModel):
        super().__init__()
        self.echoreel = echoreel
        self.__dict__["base"] = model  # not a submodule
        self.attachment = None

    def attach(self) -> None:
        if self.attachment is None:
            self.attachment = self.echoreel.attach(self.base.preset, self.base.unet)

    def detach(self) -> None:
        """Leave the base model exactly as it was (validation sampling attaches on its own)."""
        if self.attachment is not None:
            self.attachment.detach()
            self.attachment = None

    def forward(self, z0, reference, timesteps, noise, prompt, caption, context, fps) -> torch.Tensor:
        """z0, reference, noise: (b, c, t, h, w); timesteps, fps: (b,); prompt, caption: (b, 77, D);
        context: the UNet's (b, L, D) (the prompt, plus image tokens for I2V). Returns the eps MSE."""
        model = self.base
        self.attach()
        # one reference per sample: the batched Prism call is prism_tokens(prompt_i, [reference_i]) for each i
        tokens = self.echoreel.video_inject_process(torch.cat([prompt, caption], dim=1), reference)  # (b, t, tout)
        self.attachment.bind(tokens, frames_per_reference=reference.shape[2])
        x_t = model.schedule.q_sample(z0, timesteps, noise)
        eps = model.unet(x_t, timesteps, context, fps=fps)
        return F.mse_loss(eps.float(), noise.float())


def set_gradient_checkpointing(model: VideoModel, echoreel: EchoReel, enabled: bool) -> None:
    for module in model.unet.modules():
        if isinstance(module, (unet_lvdm.Block, unet_videocrafter.Block)):
            module.gradient_checkpointing = enabled
    echoreel.video_inject_process.gradient_checkpointing = enabled


def trainable_parameters(echoreel: EchoReel) -> list[nn.Parameter]:
    """Every EchoReel parameter but the official dead ones, which are frozen."""
    params = []
    for name, p in echoreel.named_parameters():
        dead = any(part in f".{name}" for part in DEAD_PARAMETERS)
        p.requires_grad_(not dead)
        if not dead:
            params.append(p)
    return params


def build_echoreel(cfg: DictConfig, model: VideoModel, latent_size: tuple[int, int]) -> EchoReel:
    """A fresh EchoReel sized to the model and the training clips (latent_size = the clips' (h, w)
    after the VAE), or the `echoreel.init` weights, which must fit both."""
    overrides = dict(cfg.echoreel.prism)
    overrides.setdefault("latent_height", latent_size[0])
    overrides.setdefault("latent_width", latent_size[1])
    if cfg.echoreel.init:
        echoreel = load_echoreel(cfg.echoreel.init)
        echoreel.check_fits(model.preset, model.unet)
        prism = echoreel.config.prism
        if (prism.latent_height, prism.latent_width) != latent_size:
            f = model.vae.downscale_factor
            raise ConfigError(
                f"{cfg.echoreel.init}: these weights take reference latents of {prism.latent_height}x"
                f"{prism.latent_width}, the training clips give {latent_size[0]}x{latent_size[1]}: set "
                f"data.height={prism.latent_height * f} data.width={prism.latent_width * f}"
            )
        if echoreel.config.query_positions != cfg.echoreel.query_positions:
            raise ConfigError(f"{cfg.echoreel.init}: these weights have query_positions="
                              f"{echoreel.config.query_positions}, the config says {cfg.echoreel.query_positions}")
        return echoreel
    try:
        config = EchoReelConfig.for_preset(model.preset, **overrides)
    except TypeError as error:
        raise ConfigError(f"echoreel.prism: {error}") from error
    return EchoReel(dataclasses.replace(config, query_positions=cfg.echoreel.query_positions))


class Learner:
    """The trained module with its AdamW, warmup schedule and GradScaler (and DDP, which the
    Trainer wraps around the module); `update()` is one optimizer step."""

    def __init__(self, cfg: DictConfig, model: VideoModel, echoreel: EchoReel, batches: Batches,
                 device: torch.device, world_size: int = 1, foreach: bool | None = None):
        self.cfg, self.model, self.echoreel, self.batches, self.device = cfg, model, echoreel, batches, device
        set_gradient_checkpointing(model, echoreel, cfg.train.gradient_checkpointing)
        self.params = trainable_parameters(echoreel)
        self.module = TrainModule(echoreel, model)
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        self.global_batch = cfg.train.batch_size * cfg.train.grad_accumulation * world_size
        o = cfg.optim
        self.optimizer = build_adamw(self.params, o, offload=o.offload, foreach=foreach)
        warmup = o.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")

    def autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.train.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of a prepared batch (Batches.prepare), through DDP when there is one."""
        with self.autocast():
            return (self.ddp or self.module)(**batch)

    def sync_context(self, last: bool):
        """DDP all-reduces the gradients in the last micro-batch of a step only."""
        return self.ddp.no_sync() if (self.ddp is not None and not last) else contextlib.nullcontext()

    def update(self, micro_batches: list[list[Sample]]) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step over the micro-batches: (mean loss, gradient norm) as tensors, and the lr.

        Tensor work only (no value is read back, no collective but DDP's own), so that the memory
        estimate runs exactly this on fake tensors. The gradients are freed when it returns:
        validation sampling and saving, which come between steps, never hold them."""
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for i, samples in enumerate(micro_batches):
            batch = self.batches.prepare(samples)
            with self.sync_context(i == len(micro_batches) - 1):
                loss = self.forward(batch)
                self.scaler.scale(loss / len(micro_batches)).backward()
            total += loss.detach()
            del batch, loss  # before the next micro-batch's tensors are made
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.grad_clip
        grads = [p.grad for p in self.params if p.grad is not None]
        if clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        del grads
        lr = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / len(micro_batches), grad_norm, lr
