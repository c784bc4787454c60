"""Motion Match: does the generated video move as the reference does? A score from dense optical
flow and a picture of both flow fields (echoreel_core/motion/match.py). OpenCV
(opencv-python-headless) is needed only when this node runs; without it the node says how to
install it, and the rest of the pack is unaffected.
"""

from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from ..echoreel_core.motion.match import MatchSettings, motion_match, picture
from .common import schema

DEFAULTS = MatchSettings()


class MotionMatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_MotionMatch", "Motion Match", "EchoReel/motion",
            "How closely the generated video's motion follows the reference's, from dense optical flow (OpenCV "
            "Farneback; needs `pip install opencv-python-headless`). Score: 1 = the same motion (at any speed), about 0 "
            "= unrelated, negative = opposite. It compares each frame step's global motion (where the moving part goes, "
            "how its size changes, how it turns) and, by layout_weight, where in the frame things move. The picture "
            "shows both flow fields side by side, colour-coded by direction (key: the colour wheel).",
            inputs=[
                io.Image.Input("reference", tooltip="The reference video's frames (Load Reference Video's frames)."),
                io.Image.Input("generated", tooltip="The generated video's frames (VideoCrafter Decode or a sampler's frames). "
                                                    "With another frame count, both are compared on evenly spaced frames."),
                io.Int.Input("size", default=DEFAULTS.size, min=32, max=1024, step=16, optional=True,
                             tooltip="The long side, in pixels, both videos are resized to for the flow (the reference's "
                                     "aspect ratio). Larger sees finer motion and takes longer."),
                io.Int.Input("grid", default=DEFAULTS.grid, min=1, max=16, optional=True,
                             tooltip="Layout cells per side: where in the frame the motion is compared."),
                io.Float.Input("layout_weight", default=DEFAULTS.layout_weight, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip="The layout's share of the score: 0 compares only the global motion (the same move "
                                       "anywhere in the frame scores 1), 1 only where things move."),
                io.Int.Input("preview_steps", default=4, min=1, max=32, optional=True,
                             tooltip="Frame steps shown in the picture, evenly spaced, one row each."),
            ],
            outputs=[
                io.Float.Output("score", display_name="score",
                                tooltip="Motion similarity in [-1, 1]: 1 the same motion, ~0 unrelated, -1 opposite."),
                io.Image.Output("picture", display_name="picture",
                                tooltip="Rows of: reference frame, its flow, generated frame, its flow (colour = direction, "
                                        "strength = speed, one scale for both), with the colour wheel as the key."),
            ],
            aliases=["motion similarity", "optical flow", "compare motion", "motion score"],
        )

    @classmethod
    def execute(cls, reference, generated, size=DEFAULTS.size, grid=DEFAULTS.grid,
                layout_weight=DEFAULTS.layout_weight, preview_steps=4) -> io.NodeOutput:
        settings = MatchSettings(size=size, grid=grid, layout_weight=layout_weight)
        match = motion_match(reference, generated, settings)
        text = match.summary()
        logging.info("Motion Match: %s", text)
        image = picture(match, preview_steps).unsqueeze(0)
        shown = ui.PreviewImage(image, cls=cls).as_dict()
        return io.NodeOutput(match.score, image, ui={**shown, "text": (text,)})


NODES: list = [MotionMatch]
