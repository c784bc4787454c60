"""Load Reference Video."""

from __future__ import annotations

import logging
import os
import warnings

import folder_paths

from ..echoreel_core.video_io import VideoReadError, read_video_frames
from . import runtime

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif", ".m4v")
RESIZE_MODES = ["squash (official)", "crop"]


def input_videos() -> list[str]:
    runtime.provide_example_input()  # here, not at import: ComfyUI sets --input-directory after importing packs
    root = folder_paths.get_input_directory()
    return sorted(f for f in os.listdir(root) if f.lower().endswith(VIDEO_EXTENSIONS) and os.path.isfile(os.path.join(root, f)))


class LoadReferenceVideo:
    DESCRIPTION = (
        "Decodes a reference video (decord, PyAV as fallback) into frames for Action Prism Encode: "
        "`frames` frames every `stride`-th frame from `start`, resized to the EchoReel model's size. "
        "A video shorter than asked repeats its last frame, as the official loader does."
    )
    CATEGORY = "EchoReel"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "INT", "FLOAT")
    RETURN_NAMES = ("frames", "frame_count", "fps")
    OUTPUT_TOOLTIPS = (
        "The selected frames, (t, h, w, 3) in 0..1.",
        "How many frames were output.",
        "The video's own frame rate.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": ("INT", {"default": 16, "min": 1, "max": 4096, "tooltip": "Frames to take (16 as official)."}),
                "stride": ("INT", {"default": 4, "min": 1, "max": 1000, "tooltip": "Take every n-th frame (4 as official)."}),
                "start": ("INT", {"default": 0, "min": 0, "max": 10**7, "tooltip": "The first frame to take."}),
                "width": ("INT", {"default": 256, "min": 8, "max": 8192, "step": 8, "tooltip": "Output width: the EchoReel model's reference size (256 for LVDM, 512 for VideoCrafter)."}),
                "height": ("INT", {"default": 256, "min": 8, "max": 8192, "step": 8, "tooltip": "Output height: the EchoReel model's reference size (256 for LVDM, 320 for VideoCrafter)."}),
                "resize": (RESIZE_MODES, {"default": RESIZE_MODES[0], "tooltip": "squash: stretch to the size, as the official loader; crop: keep the aspect ratio and crop the centre."}),
                # last, so the upload button's saved value follows every other widget value
                "video": (input_videos(), {"video_upload": True, "tooltip": "A video in ComfyUI's input folder (upload one here)."}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, video, **kwargs):
        path = runtime.input_file(video)  # a refused name raises: ComfyUI then counts the node as changed
        return f"{path}:{os.path.getmtime(path)}" if os.path.exists(path) else float("nan")

    @classmethod
    def VALIDATE_INPUTS(cls, video, **kwargs):
        try:
            path = runtime.input_file(video)
        except ValueError as error:
            return str(error)
        if not os.path.exists(path):
            return f"{video}: no such video in the input folder"
        return True

    def load(self, video, frames, stride, start, width, height, resize):
        path = runtime.input_file(video)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pixels, info, repeated = read_video_frames(
                path, num_frames=frames, stride=stride, start=start, size=(height, width),
                resize_mode="squash" if resize.startswith("squash") else "crop",
            )
        for warning in caught:
            logging.warning("Load Reference Video: %s", warning.message)
        return (pixels, pixels.shape[0], float(info.fps))


__all__ = ["LoadReferenceVideo", "VideoReadError"]
