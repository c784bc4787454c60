"""Load Reference Video: a file from ComfyUI's input folder, or any native VIDEO."""

from __future__ import annotations

import logging
import os
import warnings

import folder_paths
from comfy_api.latest import InputImpl, io

from ..echoreel_core.video_io import VIDEO_EXTENSIONS, read_video_frames, select_frames
from . import runtime
from .common import check_option, schema

RESIZE_MODES = ["squash (official)", "crop"]
SELECT = ["by frame index (official)", "by time"]


def input_videos() -> list[str]:
    runtime.provide_example_input()  # here, not at import: ComfyUI sets --input-directory after importing packs
    root = folder_paths.get_input_directory()
    return sorted(f for f in os.listdir(root) if f.lower().endswith(VIDEO_EXTENSIONS) and os.path.isfile(os.path.join(root, f)))


def file_of(video) -> str | None:
    """The file behind a native VIDEO when it is one on disk (core Load Video's), else None: a
    VIDEO made of frames would be encoded to a stream first, which loses what it holds."""
    if not isinstance(video, InputImpl.VideoFromFile):
        return None
    source = video.get_stream_source()
    return source if isinstance(source, str) and os.path.isfile(source) else None


class LoadReferenceVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_LoadReferenceVideo", "Load Reference Video", "EchoReel",
            "Decodes a reference video into frames for Action Prism Encode: `frames` frames every `stride`-th frame "
            "from `start`, resized to the EchoReel model's size. A video shorter than asked repeats its last frame, "
            "as the official loader does. A VIDEO connected to `source_video` (e.g. from core Load Video) is used "
            "instead of the file.",
            inputs=[
                io.Int.Input("frames", default=16, min=1, max=4096, tooltip="Frames to take (16 as official)."),
                io.Int.Input("stride", default=4, min=1, max=1000, tooltip="Take every n-th frame (4 as official)."),
                io.Int.Input("start", default=0, min=0, max=10**7, tooltip="The first frame to take."),
                io.Int.Input("width", default=256, min=8, max=8192, step=8,
                             tooltip="Output width: the EchoReel model's reference size (256 for LVDM, 512 for VideoCrafter)."),
                io.Int.Input("height", default=256, min=8, max=8192, step=8,
                             tooltip="Output height: the EchoReel model's reference size (256 for LVDM, 320 for VideoCrafter)."),
                io.Combo.Input("resize", options=RESIZE_MODES, default=RESIZE_MODES[0],
                               tooltip="squash: stretch to the size, as the official loader; crop: keep the aspect ratio and crop the centre."),
                # last of the widgets, so the upload button's saved value follows every other widget value
                io.Combo.Input("video", options=input_videos(), upload=io.UploadType.video,
                               tooltip="A video in ComfyUI's input folder (upload one here); ignored when source_video is connected."),
                io.Video.Input("source_video", optional=True,
                               tooltip="A native VIDEO (core Load Video, or any node that gives one): used instead of the file."),
                # optional and last: saved workflows keep their widget values in place
                io.Combo.Input("select", options=SELECT, default=SELECT[0], optional=True,
                               tooltip="by frame index: frames start, start+stride, ... as the official loader. by time: the "
                                       "frames on screen at start/fps, (start+stride)/fps, ... seconds at the video's average "
                                       "frame rate; differs only for variable-frame-rate files (phones, screen recordings)."),
            ],
            outputs=[
                io.Image.Output("selected_frames", display_name="frames", tooltip="The selected frames, (t, h, w, 3) in 0..1."),
                io.Int.Output("frame_count", display_name="frame_count", tooltip="How many frames were output."),
                io.Float.Output("fps", display_name="fps",
                                tooltip="The video's average frame rate: (frames - 1) over the time from the first to the "
                                        "last frame, the container's exact rate when they agree."),
            ],
            aliases=["load video", "motion reference"],
        )

    @classmethod
    def fingerprint_inputs(cls, video, **kwargs):
        path = runtime.input_file(video)  # a refused name raises: ComfyUI then counts the node as changed
        return f"{path}:{os.path.getmtime(path)}" if os.path.exists(path) else float("nan")

    @classmethod
    def validate_inputs(cls, video: str) -> bool | str:
        try:
            path = runtime.input_file(video)
        except ValueError as error:
            return str(error)
        if not os.path.exists(path):
            return f"{video}: no such video in the input folder"
        return True

    @classmethod
    def execute(cls, frames, stride, start, width, height, resize, video, source_video=None,
                select=SELECT[0]) -> io.NodeOutput:
        mode = "squash" if check_option("resize", resize, RESIZE_MODES).startswith("squash") else "crop"
        by = "time" if check_option("select", select, SELECT).startswith("by time") else "index"
        path = file_of(source_video) if source_video is not None else runtime.input_file(video)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if path is not None:
                pixels, info, _ = read_video_frames(path, num_frames=frames, stride=stride, start=start,
                                                    size=(height, width), resize_mode=mode, select=by)
                fps = float(info.fps)
            else:  # a VIDEO made in memory: its frames are already decoded
                components = source_video.get_components()
                pixels, repeated = select_frames(components.images, frames, stride, start, (height, width), mode)
                fps = float(components.frame_rate)
                if repeated:
                    warnings.warn(f"source_video has {components.images.shape[0]} frames; repeating the last one "
                                  f"for {repeated} of the {frames} asked")
        for warning in caught:
            logging.warning("Load Reference Video: %s", warning.message)
        return io.NodeOutput(pixels, pixels.shape[0], fps)
