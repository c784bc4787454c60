"""EchoReel weights: the Prism plus one set of integration layers per site, and their files.

Key names are the official ones without the `model.diffusion_model.` prefix:
`video_inject_process.*` for the Prism and `<site path>.video_inject_*` for the integration
layers. Our safetensors files hold exactly those keys plus metadata (base family, dimensions,
layer count, sites); the official `checkpoint.pt` (a DeepSpeed model-states pickle with the whole
LVDM inside) is read with weights_only=True and its EchoReel part taken by key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from ..models.attention import AttentionFn
from ..loading.checkpoints import CheckpointError, check_finite, read_state_dict
from ..loading.detect import UNET, UnknownModelError, detect_preset
from ..common.files import atomic_write
from ..models.ops import CoreModel
from ..models.unet_lvdm import LVDMUNet
from ..models.unet_videocrafter import VideoCrafterUNet
from ..models.presets import ModelPreset
from .integration import ActionIntegration, Attachment, Site, integration_sites
from .prism import ActionPrism, ActionPrismConfig

FORMAT = "echoreel.weights"
PRISM = "video_inject_process."


@dataclass(frozen=True)
class EchoReelConfig:
    base_family: str  # "lvdm" or "videocrafter"
    prism: ActionPrismConfig
    sites: tuple[Site, ...]
    query_positions: bool = False  # integration.position_code on the queries; never in official weights

    def describe(self) -> str:
        widths = sorted({s.channels for s in self.sites})
        return (
            f"{self.base_family} ({len(self.sites)} sites of {'/'.join(map(str, widths))} channels, text "
            f"{self.prism.text_dim}, reference latent {self.prism.latent_height}x{self.prism.latent_width}"
            f"{', position-aware queries' if self.query_positions else ''})"
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "EchoReelConfig":
        data = json.loads(text)
        return cls(data["base_family"], ActionPrismConfig(**data["prism"]), tuple(Site(**s) for s in data["sites"]),
                   data.get("query_positions", False))

    @classmethod
    def for_preset(cls, preset: ModelPreset, **prism_fields) -> "EchoReelConfig":
        """The official LVDM configuration, or its VideoCrafter counterpart (text 1024 -> 768 and a
        Tout of h*w*4 of that model's latent), sized to the given base model."""
        with torch.device("meta"):
            unet = LVDMUNet(preset.unet) if preset.family == "lvdm" else VideoCrafterUNet(preset.unet)
        factor = 2 ** (len(preset.vae.ch_mult) - 1)
        prism = ActionPrismConfig(
            text_dim=preset.unet.context_dim,
            latent_channels=preset.vae.embed_dim,
            frames=preset.unet.temporal_length,
            latent_height=preset.height // factor,
            latent_width=preset.width // factor,
        )
        return cls(preset.family, dataclasses.replace(prism, **prism_fields), integration_sites(unet))


class EchoReel(CoreModel):
    """The trainable EchoReel parameters of one base model.

    dtype, device, operations, attention: as the UNets (models/ops.py). Built without an operations
    namespace (the core's default) it is initialised, its integration layers' output projections at
    zero, so that attached untrained it leaves the base model's output exactly as it was.
    """

    def __init__(self, config: EchoReelConfig, dtype: torch.dtype | None = None, device=None, operations=None,
                 attention: AttentionFn | None = None):
        super().__init__()
        self.config = config
        p = config.prism
        f = self._factory(operations, dtype, device, attention)
        self.video_inject_process = ActionPrism(p, factory=f)
        self.integration = nn.ModuleList(
            [ActionIntegration(site, p.tout_dim, p.frames, p.latent_channels, config.query_positions, f)
             for site in config.sites]
        )
        self._finish(operations)

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        state = {PRISM + k: v for k, v in self.video_inject_process.state_dict().items()}
        for site, layer in zip(self.config.sites, self.integration):
            state.update({f"{site.path}.{k}": v for k, v in layer.state_dict().items()})
        return state

    def load_official_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Strict load by official key names; the error names `source` and lists what differs."""
        expected = self.official_state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        wrong = [f"{k} (expected {tuple(expected[k].shape)}, found {tuple(state[k].shape)})"
                 for k in expected if k in state and state[k].shape != expected[k].shape]
        problems = [f"{len(items)} {label}: {', '.join(items[:5])}{', ...' if len(items) > 5 else ''}"
                    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]
        if problems:
            raise CheckpointError(f"{source}: does not fit EchoReel for {self.config.describe()}: " + "; ".join(problems))
        self.video_inject_process.load_state_dict(
            {k[len(PRISM):]: v for k, v in state.items() if k.startswith(PRISM)}, assign=True
        )
        for site, layer in zip(self.config.sites, self.integration):
            prefix = site.path + "."
            layer.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, assign=True)

    def check_fits(self, preset: ModelPreset, unet: nn.Module) -> None:
        """Refuse a base model of another family or size, stating both."""
        sites = integration_sites(unet)
        if preset.family != self.config.base_family or sites != self.config.sites or (
            preset.unet.context_dim != self.config.prism.text_dim
        ):
            widths = "/".join(map(str, sorted({s.channels for s in sites})))
            raise ValueError(
                f"these EchoReel weights are for {self.config.describe()}; the model is {preset.name} "
                f"({preset.family}, {len(sites)} sites of {widths} channels, text {preset.unet.context_dim})"
            )

    def attach(self, preset: ModelPreset, unet: nn.Module, strength: float = 1.0) -> Attachment:
        self.check_fits(preset, unet)
        return Attachment(unet, self.integration, self.config.sites, strength)


ECHOREEL_KEY = re.compile(r"^(video_inject_process\.|.*\.video_inject_)")


def load_echoreel(path: str | Path, dtype: torch.dtype | None = torch.float32, device="cpu", operations=None,
                  attention=None) -> EchoReel:
    """Our safetensors file, or the official checkpoint.pt (whose LVDM base sizes the config).
    operations, attention: the layer namespace and attention callable (models/ops.py), e.g. ComfyUI's
    comfy.ops.manual_cast (whose layers cast and move their weights when loaded partially)."""
    path = Path(path)
    state, metadata = read_state_dict(path)
    if metadata.get("format") == FORMAT:
        try:
            config = EchoReelConfig.from_json(metadata["config"])
        except Exception as error:  # noqa: BLE001 - a damaged JSON or a field of another version
            raise CheckpointError(
                f"{path}: its `config` metadata cannot be read ({type(error).__name__}: {error}); expected the "
                "JSON that save_echoreel writes: export the weights again"
            ) from error
        weights = state
    else:
        weights = {k[len(UNET):]: v for k, v in state.items() if k.startswith(UNET) and ECHOREEL_KEY.match(k[len(UNET):])}
        if not weights:
            raise CheckpointError(f"{path}: holds no EchoReel weights (no `video_inject` keys)")
        base = {k: tuple(v.shape) for k, v in state.items() if not ECHOREEL_KEY.match(k.removeprefix(UNET))}
        try:
            preset = detect_preset(base)
        except (UnknownModelError, KeyError) as error:
            raise CheckpointError(
                f"{path}: EchoReel weights without the base model they were trained on, and without our "
                f"metadata: cannot tell their base ({error})"
            ) from error
        _check_official_groups(path, weights, preset)
        config = _official_config(preset, weights, path)
    with torch.device("meta"):
        echoreel = EchoReel(config, operations=operations, attention=attention)
    echoreel.load_official_state_dict(weights, str(path))
    check_finite(path, weights)
    echoreel.eval()  # inference by default, as load_video_model
    return echoreel.to(device=device, dtype=dtype) if dtype is not None else echoreel.to(device)


# The Prism tensors that size it; an official file without them cannot be EchoReel weights.
PRISM_SIZING = ("input_to_latent.weight", "video_to_latent.weight", "net.0.attn1.to_q.weight",
                "net.0.attn1_tmp.relative_position_k.embeddings_table")


def _check_official_groups(path: Path, weights: dict[str, torch.Tensor], preset: ModelPreset) -> None:
    """Refuse an official-layout file that lacks the Prism or some sites' integration layers,
    naming what is missing, before any shape is read from it."""
    problems = []
    missing_prism = [PRISM + k for k in PRISM_SIZING if PRISM + k not in weights]
    if not any(k.startswith(PRISM) for k in weights):
        problems.append(f"the Action Prism is missing (no {PRISM}* keys)")
    elif missing_prism:
        problems.append(f"the Action Prism ({PRISM}*) lacks {', '.join(missing_prism)}")
    with torch.device("meta"):
        unet = LVDMUNet(preset.unet) if preset.family == "lvdm" else VideoCrafterUNet(preset.unet)
    sites = [site.path for site in integration_sites(unet)]
    present = {k.split(".video_inject_")[0] for k in weights if ".video_inject_" in k}
    absent = [site for site in sites if site not in present]
    if absent:
        problems.append(f"integration layers exist for {len(sites) - len(absent)} of the {len(sites)} sites of "
                        f"{preset.name}; missing at {', '.join(absent[:4])}{', ...' if len(absent) > 4 else ''}")
    if problems:
        raise CheckpointError(f"{path}: incomplete EchoReel weights: " + "; ".join(problems)
                              + ". Expected the official checkpoint.pt as released: download it again")


def _official_config(preset: ModelPreset, weights: dict[str, torch.Tensor], path: Path) -> EchoReelConfig:
    """Size the Prism from the official weights: layers, widths, heads (from the relative-position
    tables' width), and the (square, as LVDM's 256x256) reference latent whose h*w*c is the width
    of the integration keys."""
    shape = {k: tuple(v.shape) for k, v in weights.items()}
    latent_text_dim, text_dim = shape[PRISM + "input_to_latent.weight"]
    latent_dim, channels = shape[PRISM + "video_to_latent.weight"]
    table_rows, head_dim = shape[PRISM + "net.0.attn1_tmp.relative_position_k.embeddings_table"]
    tout_dim = next(v[1] for k, v in shape.items() if k.endswith("video_inject_attn3_tmp.to_k.weight"))
    side = math.isqrt(tout_dim // channels)
    if side * side * channels != tout_dim:
        raise CheckpointError(f"{path}: reference tokens of width {tout_dim} are not a square latent of {channels} channels")
    return EchoReelConfig.for_preset(
        preset,
        layers=len({k.split(".")[2] for k in shape if k.startswith(PRISM + "net.")}),
        text_dim=text_dim,
        latent_text_dim=latent_text_dim,
        latent_dim=latent_dim,
        heads=shape[PRISM + "net.0.attn1.to_q.weight"][0] // head_dim,
        head_dim=head_dim,
        frames=(table_rows - 1) // 2,
        latent_height=side,
        latent_width=side,
    )


def save_echoreel(echoreel: EchoReel, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the EchoReel weights (official key names) with their config as metadata, atomically."""
    path = Path(path)
    tensors = {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in echoreel.official_state_dict().items()}
    stored = next(iter(tensors.values())).dtype
    metadata = {
        "format": FORMAT,
        "base_family": echoreel.config.base_family,
        "layers": str(echoreel.config.prism.layers),
        "dtype": str(stored).removeprefix("torch."),
        "config": echoreel.config.to_json(),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
