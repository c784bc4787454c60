"""The injection report: proof, after a sampling run, that the motion was injected.

A patch that silently does nothing (a window between two steps, a curve that is 0 at every step,
weights on the wrong model) leaves no trace in the video a user can tell from a weak reference.
So every run counts where the integration layers ran and how large their residual was next to
the hidden state they were added to, per UNet level, and whether any value was NaN/Inf.

Cheap per call: two float32 norms kept on the device; one transfer at the end of the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

LEVELS = ("input", "middle", "output")


def site_level(path: str) -> str:
    """The UNet level of an integration site from its path ("input_blocks.1.1.transformer_blocks.0")."""
    for level, prefix in (("input", "input_blocks."), ("middle", "middle_block."), ("output", "output_blocks.")):
        if path.startswith(prefix):
            return level
    raise ValueError(f"{path!r} is not under input_blocks, middle_block or output_blocks")


class InjectionError(RuntimeError):
    """EchoReel was applied with a strength above 0 but no integration layer ran in a run."""


@dataclass
class InjectionReport:
    """The counts of one sampling run (made by InjectionLog.report)."""

    layers: int  # distinct integration sites that ran
    total_layers: int  # sites of the UNet
    steps: int  # distinct sigmas at which they ran
    total_steps: int  # distinct sigmas the UNet was called at
    layer_steps: int  # (site, sigma) pairs that ran
    ratio: dict[str, float]  # level -> mean ||added residual|| / ||hidden|| over its calls
    nonfinite: list[str] = field(default_factory=list)  # "residual at input_blocks.1... (percent 0.25)"

    def text(self) -> str:
        lines = [f"EchoReel: {self.layers} of {self.total_layers} integration layers ran at {self.steps} of "
                 f"{self.total_steps} steps ({self.layer_steps} layer-steps)."]
        if self.ratio:
            parts = ", ".join(f"{level} {value:.4g}" for level, value in self.ratio.items())
            lines.append(f"Mean residual/hidden norm per UNet level: {parts}.")
        if self.nonfinite:
            more = f" (and {len(self.nonfinite) - 3} more)" if len(self.nonfinite) > 3 else ""
            lines.append("NON-FINITE values: " + "; ".join(self.nonfinite[:3]) + more + ".")
        elif self.layer_steps:
            lines.append("All residuals and hidden states finite.")
        return "\n".join(lines)


class InjectionLog:
    """Collects, per call of one site, its norms; `report()` sums them up at the end of a run."""

    def __init__(self, site_paths: list[str]):
        self.paths = list(site_paths)
        self.levels = [site_level(p) for p in self.paths]
        self.reset()

    def reset(self) -> None:
        self.seen: set[float] = set()  # sigmas of every call, active or not
        self.calls: list[tuple[int, float, float]] = []  # (site, sigma, percent) of the calls that ran
        self.norms: list[torch.Tensor] = []  # (2,) per call that ran: ||added||, ||hidden|| (float32)

    def saw(self, sigma: float) -> None:
        self.seen.add(sigma)

    def ran(self, site: int, sigma: float, percent: float, added: torch.Tensor, hidden: torch.Tensor) -> None:
        self.calls.append((site, sigma, percent))
        self.norms.append(torch.stack([torch.linalg.vector_norm(added, dtype=torch.float32),
                                       torch.linalg.vector_norm(hidden, dtype=torch.float32)]))

    def report(self) -> InjectionReport:
        norms = torch.stack(self.norms).cpu() if self.norms else torch.zeros(0, 2)
        sums = {level: [0.0, 0] for level in LEVELS}
        nonfinite = []
        for (site, _, percent), (added, hidden) in zip(self.calls, norms.tolist()):
            where = f"at {self.paths[site]} (percent {percent:.3f})"
            if not math.isfinite(hidden):
                nonfinite.append(f"hidden state {where}")
            elif not math.isfinite(added):
                nonfinite.append(f"residual {where}")
            else:
                ratio = added / hidden if hidden > 0 else 0.0
                sums[self.levels[site]][0] += ratio
                sums[self.levels[site]][1] += 1
        return InjectionReport(
            layers=len({site for site, _, _ in self.calls}), total_layers=len(self.paths),
            steps=len({sigma for _, sigma, _ in self.calls}), total_steps=len(self.seen),
            layer_steps=len({(site, sigma) for site, sigma, _ in self.calls}),
            ratio={level: s / n for level, (s, n) in sums.items() if n}, nonfinite=nonfinite,
        )
