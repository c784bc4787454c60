"""Blend Motion, Motion Schedule and Motion Frame Weights: how much motion, when and where.

Blend Motion mixes action features (a new motion for Apply EchoReel to Model); the schedule and
frame weights are curves that Apply EchoReel's patch evaluates at each call (the step's percent of
the schedule, the video's frames), together with its optional MASK (echoreel_core/echoreel/control.py).
"""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..echoreel_core.echoreel.control import Curve, blend_features, frame_weights, parse_curve
from .common import ActionFeaturesType, schema

# the curves travel as echoreel_core Curve objects
ScheduleType = io.Custom("ECHOREEL_MOTION_SCHEDULE")
FrameWeightsType = io.Custom("ECHOREEL_FRAME_WEIGHTS")

CURVE_SYNTAX = "Keyframes `x:value`, separated by commas or new lines, linear between them, constant beyond the first and last."


def weight_input(name: str, default: float, tooltip: str) -> io.Input:
    return io.Float.Input(name, default=default, min=0.0, max=4.0, step=0.05, tooltip=tooltip)


class BlendMotion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_BlendMotion", "Blend Motion", "EchoReel/motion",
            "A weighted mix of two motions: weight_a x motion_a + weight_b x motion_b, on both guidance branches. "
            "Both must come from references of the same frame count and number of clips, encoded for the same "
            "EchoReel weights. Weights summing to 1 keep the features' scale; (1, 0) is motion_a exactly. Chain Blend "
            "Motion nodes for more motions. To let the video attend to several references side by side instead, give "
            "them to one Action Prism Encode (add_to).",
            inputs=[
                ActionFeaturesType.Input("motion_a", tooltip="Action features (Action Prism Encode, Load Motion or another Blend Motion)."),
                weight_input("weight_a", 0.5, "The weight of motion_a."),
                ActionFeaturesType.Input("motion_b", tooltip="Action features of the same shape as motion_a."),
                weight_input("weight_b", 0.5, "The weight of motion_b (0 drops it exactly)."),
            ],
            outputs=[ActionFeaturesType.Output("action_features", display_name="action_features",
                                               tooltip="The blended features, for Apply EchoReel to Model or Save Motion.")],
            aliases=["mix motion", "combine motion", "blend references"],
        )

    @classmethod
    def execute(cls, motion_a, weight_a, motion_b, weight_b) -> io.NodeOutput:
        return io.NodeOutput(blend_features([(motion_a, weight_a), (motion_b, weight_b)]))


def sample_text(curve: Curve, xs: list[float]) -> str:
    return ", ".join(f"{x:g}: {curve(x):.3g}" for x in xs)


class MotionSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_MotionSchedule", "Motion Schedule", "EchoReel/motion",
            "Motion strength over the denoising schedule, for Apply EchoReel to Model's schedule input: a multiplier "
            "of its strength at each step's percent (0 = pure noise, 1 = the end; ComfyUI's percent, as start/end "
            "percent). E.g. `0:1, 0.4:1, 0.7:0` is full strength early, fading out, off after 70%. " + CURVE_SYNTAX,
            inputs=[io.String.Input("keyframes", default="0:1, 0.4:1, 0.7:0", multiline=True,
                                    tooltip="`percent:strength` pairs, percents 0..1 in order; strength >= 0 multiplies "
                                            "Apply EchoReel's strength. Two keyframes at one percent make a step.")],
            outputs=[ScheduleType.Output("schedule", display_name="schedule",
                                         tooltip="For Apply EchoReel to Model's schedule input.")],
            aliases=["motion strength curve", "keyframes", "schedule"],
        )

    @classmethod
    def execute(cls, keyframes) -> io.NodeOutput:
        curve = parse_curve(keyframes, "Motion Schedule: keyframes", "percent", x_max=1.0)
        text = "strength x at percent " + sample_text(curve, [i / 10 for i in range(11)])
        return io.NodeOutput(curve, ui=ui.PreviewText(text))


class MotionFrameWeights(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_MotionFrameWeights", "Motion Frame Weights", "EchoReel/motion",
            "Motion strength per generated frame, for Apply EchoReel to Model's frame_weights input: the injected "
            "residual of frame i is multiplied by the curve at i (frames count from 0). E.g. `0:0, 3:1, 7:1, 8:0` "
            "fades the motion in over frames 0-3 and keeps it to frames 0-7; weight 0 leaves a frame as the base "
            "model makes it at the integration layers. " + CURVE_SYNTAX,
            inputs=[io.String.Input("keyframes", default="0:1, 7:1, 8:0", multiline=True,
                                    tooltip="`frame:weight` pairs, frames in order; weight >= 0. Two keyframes at one "
                                            "frame make a step.")],
            outputs=[FrameWeightsType.Output("frame_weights", display_name="frame_weights",
                                             tooltip="For Apply EchoReel to Model's frame_weights input.")],
            aliases=["per frame motion", "temporal mask", "fade in motion"],
        )

    @classmethod
    def execute(cls, keyframes) -> io.NodeOutput:
        curve = parse_curve(keyframes, "Motion Frame Weights: keyframes", "frame")
        weights = frame_weights(curve, 16)
        text = "weights of frames 0-15: " + ", ".join(f"{w:.3g}" for w in weights.tolist())
        return io.NodeOutput(curve, ui=ui.PreviewText(text))


NODES: list = [BlendMotion, MotionSchedule, MotionFrameWeights]
