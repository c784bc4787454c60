"""What every node of the pack repeats: its schema's shared fields, the custom types that travel
between the nodes, and the inputs several nodes take with the same meaning and tooltip.

Node ids, input ids and output ids are saved in workflows: never rename one (the wave-1 V1
workflows still load because they did not change).
"""

from __future__ import annotations

import dataclasses

from comfy_api.latest import io

# custom types: objects of this pack, never seen by ComfyUI's own nodes
EchoReelType = io.Custom("ECHOREEL")
ActionFeaturesType = io.Custom("ECHOREEL_ACTION_FEATURES")

SEARCH_ALIASES = ["motion transfer", "reference video", "VideoCrafter", "EchoReel", "LVDM", "imitate motion"]
_SCHEMA_FIELDS = {f.name for f in dataclasses.fields(io.Schema)}


def schema(node_id: str, display_name: str, category: str, description: str, inputs, outputs,
           aliases: list[str] | None = None, deprecated: bool = False, output_node: bool = False) -> io.Schema:
    """io.Schema with the pack's category root and search aliases; aliases only where this
    ComfyUI's schema has the field (0.33 does, 0.3.75 does not). A deprecated node still runs
    (saved workflows hold it) but is hidden from the node search."""
    extra = {"search_aliases": SEARCH_ALIASES + (aliases or [])} if "search_aliases" in _SCHEMA_FIELDS else {}
    return io.Schema(node_id=node_id, display_name=display_name, category=category, description=description,
                     inputs=inputs, outputs=outputs, is_deprecated=deprecated, is_output_node=output_node, **extra)


def check_option(name: str, value: str, options: list[str]) -> str:
    """A combo value at run time: ComfyUI 0.33 refuses an unknown option at validation, 0.3.75
    checks only V1 (list-typed) combos, so the node says it itself there, naming the input."""
    if value not in options:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(map(repr, options))}")
    return value


def model_input(tooltip: str = "From Load VideoCrafter Checkpoint (or Apply EchoReel to Model).") -> io.Input:
    return io.Model.Input("model", tooltip=tooltip)


def echoreel_input() -> io.Input:
    return EchoReelType.Input("echoreel", tooltip="From Load EchoReel: weights trained for this model's family and size.")


def vae_input(tooltip: str) -> io.Input:
    return io.Vae.Input("vae", tooltip=tooltip)


def seed_input(default: int, tooltip: str, control: bool = False) -> io.Input:
    return io.Int.Input("seed", default=default, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=control,
                        tooltip=tooltip)
