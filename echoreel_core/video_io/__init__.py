"""Reading reference videos and writing generated ones.

May import: common.

One job per module:
- read.py: `read_video_frames` and `probe_video`, the frame selection (by index, the official
  default, or by time), resizing; its docstring says what the reader guarantees.
- window.py: choosing the window besides start and stride: the most motion (its measure stated)
  or a duration; pure arithmetic on indices and small frames.
- reference.py: `read_reference` / `select_reference`: the window chosen, the frames read and
  fitted (squash, crop, letterbox), and which source frames and times they are.
- timeline.py: the frames a file holds in display order and its keyframes, from its packets.
- decode.py: decoding the frames asked for by timestamp, with seeks to the keyframe before.
- frames.py: one decoded frame to upright RGB at the asked size (FFmpeg's scale filter).
- colour.py: HDR tone mapping to SDR BT.709 and alpha compositing, the operators stated.
- webp.py: animated WebP through Pillow (FFmpeg does not decode it).
- write.py: `write_video`, mp4 (h264) and gif, and one frame as png.
- tensors.py: between ComfyUI's IMAGE layout (t, h, w, 3) in [0, 1] and the models'
  (b, 3, t, h, w) in [-1, 1].
"""

from .read import (
    RESIZE_MODES,
    SELECT_MODES,
    VIDEO_EXTENSIONS,
    VideoInfo,
    VideoReadError,
    frame_indices,
    frame_times,
    probe_video,
    read_frames_at,
    read_video_frames,
    select_frames,
    time_indices,
)
from .reference import Reference, read_reference, select_reference
from .window import WINDOWS
from .tensors import frames_to_model_input, model_output_to_frames, stack_side_by_side, to_uint8
from .write import write_video

__all__ = [
    "RESIZE_MODES",
    "Reference",
    "SELECT_MODES",
    "VIDEO_EXTENSIONS",
    "VideoInfo",
    "VideoReadError",
    "WINDOWS",
    "frame_indices",
    "frame_times",
    "frames_to_model_input",
    "model_output_to_frames",
    "probe_video",
    "read_frames_at",
    "read_reference",
    "read_video_frames",
    "select_frames",
    "select_reference",
    "stack_side_by_side",
    "time_indices",
    "to_uint8",
    "write_video",
]
