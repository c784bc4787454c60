"""Save Motion and Load Motion: action features as files in models/echoreel_motion.

The file format, its checks and hashes are echoreel_core/motion's; these nodes choose the file
name (ComfyUI's prefix and counter, as its own savers do), collect what the graph knows of where
the features came from, and show what a file holds.
"""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io, ui

from ..echoreel_core.common.files import make_folder
from ..echoreel_core.motion import check_weights, describe, file_sha256, frames_sha256, read_motion, save_motion
from . import runtime
from .common import ActionFeaturesType, echoreel_input, model_file_input, schema

FOLDER = "echoreel_motion"
PROMPT_NOTE = ("The features depend on the prompt and negative prompt they were encoded with, not only on the "
               "reference: sample with those prompts.")


def motion_folder() -> str:
    """Where Save Motion writes: the first models/echoreel_motion folder ComfyUI knows."""
    return folder_paths.get_folder_paths(FOLDER)[0]


class SaveMotion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_SaveMotion", "Save Motion", "EchoReel/motion",
            "Saves action features to a motion file in models/echoreel_motion, to be reused with Load Motion "
            "without the reference video. The file records the EchoReel weights that made it (family and a hash of "
            "the Action Prism's weights) and, from the optional inputs, the source video, its frames, the caption "
            "and the prompts. " + PROMPT_NOTE,
            inputs=[
                ActionFeaturesType.Input("action_features", tooltip="From Action Prism Encode (or Load Motion)."),
                echoreel_input(),
                io.String.Input("filename_prefix", default="motion",
                                tooltip="File name prefix in models/echoreel_motion; a counter is appended "
                                        "(motion_00001_.safetensors). A prefix with folders writes into subfolders."),
                io.String.Input("source_video", default="", optional=True,
                                tooltip="The reference video's file name, recorded; a file of that name in the input "
                                        "folder is hashed too. Empty: unknown."),
                io.String.Input("caption", default="", optional=True,
                                tooltip="The reference caption the features were encoded with. Empty: unknown."),
                io.String.Input("prompt", default="", multiline=True, optional=True,
                                tooltip="The prompt the features were encoded with (they depend on it). Empty: unknown."),
                io.String.Input("negative_prompt", default="", optional=True,
                                tooltip="The negative prompt of the unconditional branch. Empty: unknown."),
                io.Image.Input("reference", optional=True,
                               tooltip="The reference frames the Prism saw (Load Reference Video's frames): their hash "
                                       "and size are recorded."),
                io.Int.Input("stride", default=0, min=0, max=1000, optional=True,
                             tooltip="The reference loader's stride, recorded. 0: unknown."),
                io.Float.Input("fps", default=0.0, min=0.0, max=1000.0, step=0.001, optional=True,
                               tooltip="The reference video's frame rate (Load Reference Video's fps), recorded. 0: unknown."),
            ],
            outputs=[io.String.Output("motion_name", display_name="motion_name",
                                      tooltip="The saved file's name in models/echoreel_motion, as Load Motion lists it.")],
            aliases=["save motion", "motion file", "export motion"],
            output_node=True,
        )

    @classmethod
    def execute(cls, action_features, echoreel, filename_prefix, source_video="", caption="", prompt="",
                negative_prompt="", reference=None, stride=0, fps=0.0) -> io.NodeOutput:
        root = os.path.abspath(motion_folder())
        make_folder(root)
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, root)
        make_folder(folder)
        file_name = f"{name}_{counter:05}_.safetensors"
        source_hash = None
        if source_video:
            try:
                path = runtime.input_file(source_video)  # never hash a file outside ComfyUI's folders
            except ValueError as error:
                raise ValueError(f"Save Motion: source_video: {error}") from None
            source_hash = file_sha256(path) if os.path.isfile(path) else None
        info = {
            "source_video": source_video or None, "source_sha256": source_hash,
            "frames_sha256": frames_sha256(reference) if reference is not None else None,
            "size": f"{reference.shape[2]}x{reference.shape[1]}" if reference is not None else None,
            "stride": stride or None, "fps": f"{fps:g}" if fps else None,
            "caption": caption or None, "prompt": prompt or None, "negative_prompt": negative_prompt or None,
        }
        path = save_motion(os.path.join(folder, file_name), action_features, echoreel.model, info)
        motion_name = os.path.join(subfolder, file_name) if subfolder else file_name
        lines = [f"saved {path} ({path.stat().st_size:,} bytes)"] + describe(read_motion(path))[1:]
        return io.NodeOutput(motion_name, ui=ui.PreviewText("\n".join(lines)))


class LoadMotion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_LoadMotion", "Load Motion", "EchoReel/motion",
            "Loads a motion file from models/echoreel_motion as action features for Apply EchoReel to Model: the "
            "reference video is not needed again. Refused with EchoReel weights other than those that made it (another "
            "family or other Action Prism weights), naming both. " + PROMPT_NOTE + " The node's text shows them.",
            inputs=[
                model_file_input("motion_name", FOLDER, " Save Motion writes there."),
                echoreel_input(),
            ],
            outputs=[ActionFeaturesType.Output("action_features", display_name="action_features",
                                               tooltip="The saved features, bit for bit as Action Prism Encode gave them.")],
            aliases=["load motion", "motion file", "import motion"],
        )

    @classmethod
    def validate_inputs(cls, motion_name: str) -> bool | str:
        return runtime.validate_model_file(FOLDER, motion_name)

    @classmethod
    def fingerprint_inputs(cls, motion_name, **kwargs):
        try:  # a refused name raises ValueError: ComfyUI then counts the node as changed
            path = runtime.model_path(FOLDER, motion_name)
        except FileNotFoundError:
            return float("nan")  # never equal: validation then says what is missing
        stat = os.stat(path)
        return f"{path}:{stat.st_mtime_ns}:{stat.st_size}"  # a file saved again under the name is read again

    @classmethod
    def execute(cls, motion_name, echoreel) -> io.NodeOutput:
        motion = read_motion(runtime.model_path(FOLDER, motion_name))
        check_weights(motion, echoreel.model)
        return io.NodeOutput(motion.features, ui=ui.PreviewText("\n".join(describe(motion))))


NODES: list = [SaveMotion, LoadMotion]
