"""The trainer's optimizer: AdamW on the device, or AdamW with its fp32 states in host memory.

AdamW keeps two fp32 states per trained weight (exp_avg, exp_avg_sq): for VideoCrafter2's 0.77 B
EchoReel parameters that is 5.7 GiB of GPU memory, more than the frozen base model. With
`optim.offload=true` the states, a fp32 master copy of the weights and a gradient buffer live in
host memory instead (4 x the trained weights' bytes of RAM per process, pinned when CUDA is
used): each step copies the gradients to the host, runs torch's own AdamW there, and copies the
updated weights back. The update is the same fp32 AdamW; on the CPU it is the same kernel on the
same numbers, so a CPU run is bit-identical to the plain optimizer (tested); on CUDA it differs
from the GPU kernel by float rounding only. The price is host memory and the two copies per step
(about 1.5 GB each way for VideoCrafter2: tens of milliseconds over PCIe 4) plus the CPU update.

Checkpoints are interchangeable: the offloaded optimizer saves and loads torch's AdamW state dict,
so a run may switch `optim.offload` at a resume.
"""

from __future__ import annotations

from typing import Iterable

import torch


def build_adamw(params: list[torch.nn.Parameter], optim, offload: bool = False, foreach: bool | None = None):
    """torch.optim.AdamW with the config's hyper-parameters, or its host-memory variant."""
    settings = dict(lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay)
    if offload:
        return OffloadedAdamW(params, **settings)
    return torch.optim.AdamW(params, foreach=foreach, **settings)


class OffloadedAdamW(torch.optim.Optimizer):
    """AdamW over device weights whose states, master weights and gradient copies are in host memory.

    Its param_groups are the device weights, so learning-rate schedulers, GradScaler and gradient
    clipping see what they see with torch's AdamW; the update itself is an inner torch AdamW over
    the host copies. After loading weights into the device parameters, `load_state_dict` (which a
    resume always calls) or `sync_from_device` refreshes the host copies."""

    def __init__(self, params: Iterable[torch.nn.Parameter], **settings):
        super().__init__(list(params), dict(settings))
        self.inner = None  # built on first use: the device weights may still be loaded or moved
        self._settings = settings

    def _host_copy(self, tensor: torch.Tensor) -> torch.Tensor:
        pin = tensor.device.type == "cuda"
        return torch.empty(tensor.shape, dtype=torch.float32, device="cpu", pin_memory=pin)

    def _build_inner(self) -> None:
        groups = []
        self._pairs = []  # (device param, host master, host gradient buffer)
        for group in self.param_groups:
            masters = []
            for p in group["params"]:
                master = self._host_copy(p)
                self._pairs.append((p, master, self._host_copy(p)))
                masters.append(master)
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": masters})
        self.inner = torch.optim.AdamW(groups, **self._settings)
        self.sync_from_device()

    @torch.no_grad()
    def sync_from_device(self) -> None:
        """Copy the device weights into the host masters (after weights were loaded or changed)."""
        if self.inner is None:
            self._build_inner()
            return
        for p, master, _ in self._pairs:
            master.copy_(p.detach())

    def _sync_groups(self) -> None:
        """The schedulers change lr (and add initial_lr) on our groups; the inner AdamW uses them."""
        for ours, inner in zip(self.param_groups, self.inner.param_groups):
            for key, value in ours.items():
                if key != "params":
                    inner[key] = value

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("OffloadedAdamW.step takes no closure")
        if self.inner is None:
            self._build_inner()
        self._sync_groups()
        for p, master, grad in self._pairs:
            if p.grad is None:
                master.grad = None
            else:
                grad.copy_(p.grad, non_blocking=True)
                master.grad = grad
        if any(p.device.type == "cuda" for p, _, _ in self._pairs):
            torch.cuda.synchronize()  # the gradients have arrived before the host reads them
        self.inner.step()
        for p, master, _ in self._pairs:
            if master.grad is not None:
                p.copy_(master, non_blocking=True)  # ordered before any later kernel on the stream
            master.grad = None
        return None

    def state_dict(self) -> dict:
        if self.inner is None:
            self._build_inner()
        self._sync_groups()
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        if self.inner is None:
            self._build_inner()
        self.inner.load_state_dict(state_dict)
        for ours, inner in zip(self.param_groups, self.inner.param_groups):
            ours.update({k: v for k, v in inner.items() if k != "params"})
        self.sync_from_device()
