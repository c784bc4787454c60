"""Load Reference Video: a file from ComfyUI's input folder, or any native VIDEO."""

from __future__ import annotations

import logging
import os
import uuid
import warnings

import folder_paths
from comfy_api.latest import InputImpl, io

from ..echoreel_core.common.files import WriteError, make_folder
from ..echoreel_core.video_io import VIDEO_EXTENSIONS, read_reference, select_reference, write_video
from . import runtime
from .common import check_option, reference_size_inputs, schema

RESIZE_MODES = ["squash (official)", "crop"]  # Find Reference Video's too
# this node's resize: letterbox comes last, so a saved workflow's value keeps its meaning; one input
# says how the frame fits the model's size (a second "fit" input would be a second way to say it)
FIT_MODES = RESIZE_MODES + ["letterbox"]
FIT_CORE = {"squash (official)": "squash", "crop": "crop", "letterbox": "letterbox"}
SELECT = ["by frame index (official)", "by time"]
WINDOWS = ["as set", "most motion", "match duration"]
WINDOW_CORE = {"as set": "set", "most motion": "motion", "match duration": "duration"}
PREVIEW_FPS = 8.0  # a preview's rate when the video has none
FRAMES_PER_LINE = 4


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
            "from `start` (or the window with the most motion, or one spanning a duration), fitted to the EchoReel "
            "model's size. A video shorter than asked repeats its last frame, as the official loader does. A VIDEO "
            "connected to `source_video` (e.g. from core Load Video) is used instead of the file. The node's "
            "preview plays exactly the output frames, at the model's size, and lists which source frames and "
            "times they are.",
            inputs=[
                io.Int.Input("frames", default=16, min=1, max=4096, tooltip="Frames to take (16 as official)."),
                io.Int.Input("stride", default=4, min=1, max=1000,
                             tooltip="Take every n-th frame (4 as official). Ignored by window \"match duration\", "
                                     "which chooses it."),
                io.Int.Input("start", default=0, min=0, max=10**7,
                             tooltip="The first frame to take; for window \"most motion\", the first start searched."),
                *reference_size_inputs(),
                io.Combo.Input("resize", options=FIT_MODES, default=FIT_MODES[0],
                               tooltip="How the frame fits the size. squash: stretch to it, as the official loader; "
                                       "crop: keep the aspect ratio, fill the size and cut the centre out; letterbox: "
                                       "keep the aspect ratio and the whole picture, black bars fill the rest."),
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
                io.Combo.Input("window", options=WINDOWS, default=WINDOWS[0], optional=True,
                               tooltip="as set: start and stride as given. most motion: the start, at or after `start`, "
                                       "whose frames change most from one to the next (mean absolute luma difference "
                                       "on a 64-pixel decode; ties go to the earliest). match duration: the stride "
                                       "that makes the frames cover `duration` seconds (frames x stride / fps, "
                                       "rounded to the nearest stride)."),
                io.Float.Input("duration", default=2.0, min=0.05, max=3600.0, step=0.05, optional=True,
                               tooltip="Seconds of video the frames should cover; used by window \"match duration\" only."),
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
                select=SELECT[0], window=WINDOWS[0], duration=2.0) -> io.NodeOutput:
        fit = FIT_CORE[check_option("resize", resize, FIT_MODES)]
        by = "time" if check_option("select", select, SELECT).startswith("by time") else "index"
        choice = WINDOW_CORE[check_option("window", window, WINDOWS)]
        path = file_of(source_video) if source_video is not None else runtime.input_file(video)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if path is not None:
                ref = read_reference(path, frames, stride, start, (height, width), fit, by, choice, duration)
                name = os.path.basename(path)
            else:  # a VIDEO made in memory: its frames are already decoded
                components = source_video.get_components()
                try:
                    ref = select_reference(components.images, float(components.frame_rate), frames, stride, start,
                                           (height, width), fit, choice, duration)
                except ValueError as error:
                    raise ValueError(f"source_video: {error}") from None
                name = "source_video"
                if ref.repeated:
                    warnings.warn(f"source_video has {components.images.shape[0]} frames; repeating the last one "
                                  f"for {ref.repeated} of the {frames} asked")
        for warning in caught:
            logging.warning("Load Reference Video: %s", warning.message)
        text = selection_text(name, ref, resize)
        logging.info("Load Reference Video: %s", text.replace("\n", "; "))
        ui = {"text": (text,)}
        try:
            ui.update(images=[preview(ref)], animated=(True,))
        except WriteError as error:  # the frames are right; only the preview is missing
            logging.warning("Load Reference Video: no preview: %s", error)
        return io.NodeOutput(ref.frames, ref.frames.shape[0], ref.fps, ui=ui)


def preview(ref) -> dict:
    """The output frames as an mp4 in ComfyUI's temp folder (the node's video widget plays it in
    place of the input file): the same frames at the same size, played at fps / stride so that the
    motion runs at its real speed. H.264 (crf 10, 4:2:0 colour) is the only change to the pixels."""
    rate = ref.fps / ref.stride if ref.fps > 0 else PREVIEW_FPS
    folder = folder_paths.get_temp_directory()
    make_folder(folder)  # ComfyUI makes it at start-up; a node run without the server may not have it
    name = f"EchoReel_reference_{uuid.uuid4().hex[:12]}.mp4"
    write_video(os.path.join(folder, name), ref.frames, rate)
    return {"filename": name, "subfolder": "", "type": "temp"}


def selection_text(name: str, ref, resize: str) -> str:
    """What the Prism gets, in words: the fit, the window and each output frame's source frame and
    time (seconds after the video's first frame)."""
    t, h, w, _ = ref.frames.shape
    fps = f"{ref.fps:.3f} fps" if ref.fps > 0 else "no frame rate"
    lines = [f"{name} ({fps}): {t} frames at {w}x{h}, {resize}"]
    if ref.window == "motion" and ref.searched is not None:
        lines.append(f"window most motion: start {ref.start} of the starts {ref.searched[0]}..{ref.searched[1]} "
                     f"(motion energy {ref.energy:.4f}), stride {ref.stride}")
    elif ref.window == "motion":
        lines.append(f"window most motion: no whole window to compare; start {ref.start}, stride {ref.stride}")
    elif ref.window == "duration":
        lines.append(f"window match duration: stride {ref.stride}, the frames cover {ref.covers:.3f} s")
    else:
        lines.append(f"window as set: start {ref.start}, stride {ref.stride}")
    lines.append("source frame @ seconds:")
    pairs = [f"{i} @ {s:.3f}" for i, s in zip(ref.indices, ref.times)]
    lines += ["  " + ", ".join(pairs[k : k + FRAMES_PER_LINE]) for k in range(0, len(pairs), FRAMES_PER_LINE)]
    if ref.repeated:
        lines.append(f"the video is too short: its last frame is repeated for {ref.repeated} of the {t} frames")
    return "\n".join(lines)
