"""What every node of the pack repeats: its schema's shared fields, the custom types that travel
between the nodes, and the inputs several nodes take with the same meaning and tooltip: the model,
VAE and EchoReel weights, the prompts, a seed, DDIM's eta, the video's and the reference's size, and
a model file from the pack's model folders (listed, and checked before a run). The nodes' progress
bars and previews are runtime.Progress.

Node ids, input ids and output ids are saved in workflows: never rename one (the wave-1 V1
workflows still load because they did not change).
"""

from __future__ import annotations

import dataclasses

from comfy_api.latest import io

from . import runtime

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


def prompt_inputs() -> list[io.Input]:
    """positive and negative, in that order (saved workflows keep it)."""
    return [
        io.Conditioning.Input("positive", tooltip="The prompt, from CLIP Text Encode."),
        io.Conditioning.Input("negative", tooltip="The negative prompt, from CLIP Text Encode (an empty text is the "
                                                  "official unconditional prompt)."),
    ]


def eta_input() -> io.Input:
    return io.Float.Input("eta", default=1.0, min=0.0, max=1.0, step=0.05,
                          tooltip="DDIM eta (1.0 as official; 0 is deterministic DDIM).")


def video_size_inputs() -> list[io.Input]:
    """width and height of the video to generate, in pixels."""
    return [
        io.Int.Input("width", default=512, min=16, max=4096, step=16,
                     tooltip="Video width in pixels (512 for VideoCrafter 512 models, 256 for LVDM, 64 for the toy)."),
        io.Int.Input("height", default=320, min=16, max=4096, step=16,
                     tooltip="Video height in pixels (320 for VideoCrafter 512 models, 256 for LVDM, 64 for the toy)."),
    ]


def reference_size_inputs() -> list[io.Input]:
    """width and height the reference frames are fitted to: the EchoReel weights' reference size."""
    return [
        io.Int.Input("width", default=256, min=8, max=8192, step=8,
                     tooltip="Output width: the EchoReel model's reference size (256 for LVDM, 512 for VideoCrafter, "
                             "64 for the toy)."),
        io.Int.Input("height", default=256, min=8, max=8192, step=8,
                     tooltip="Output height: the EchoReel model's reference size (256 for LVDM, 320 for VideoCrafter, "
                             "64 for the toy)."),
    ]


def model_file_input(name: str, kind: str, note: str = "") -> io.Input:
    """A file of the model folders of `kind` (runtime.MODEL_FOLDERS); the node's validate_inputs
    checks the value with runtime.validate_model_file before a run."""
    first, *more = runtime.MODEL_FOLDERS[kind]
    where = f"models/{first}" + "".join(f" (or models/{folder})" for folder in more)
    return io.Combo.Input(name, options=runtime.model_files(kind), tooltip=f"A file in {where}.{note}")

