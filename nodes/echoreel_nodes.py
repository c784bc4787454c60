"""Action Prism Encode and Apply EchoReel to Model."""

from __future__ import annotations

import comfy.patcher_extension
import torch
from comfy_api.latest import io

from ..echoreel_core.echoreel.control import check_mask
from ..echoreel_core.echoreel.features import ActionFeatures, Reference, action_features, encode_reference
from ..echoreel_core.video_io import frames_to_model_input
from . import runtime
from .common import ActionFeaturesType, check_option, echoreel_input, model_input, schema, seed_input, vae_input
from .loaders import core_vae
from .model import SITE_PATCH, video_base_model
from .motion_control import FrameWeightsType, ScheduleType
from .patch import REPORT_KEY, EchoReelPatch, echoreel_patches

POSTERIOR = ["sample (official)", "mean"]


def text_context(conditioning, what: str) -> torch.Tensor:
    """The (1, L, D) tensor of a one-entry CONDITIONING."""
    if len(conditioning) != 1:
        raise ValueError(f"{what}: expected one conditioning entry, got {len(conditioning)} (combine prompts before)")
    return conditioning[0][0]


def reference_clips(reference: torch.Tensor, reference_caption) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(frames, caption context) per reference clip: one clip, or, when reference_caption holds k
    entries (Find Reference Video's several clips, or captions joined by Conditioning Combine), the
    frames split into k clips of equal length, in order."""
    k = len(reference_caption)
    if k == 1:
        return [(reference, text_context(reference_caption, "reference_caption"))]
    if k == 0 or reference.shape[0] % k:
        raise ValueError(f"reference_caption has {k} entries, one per reference clip, but the {reference.shape[0]} "
                         f"reference frames do not split into {k} clips of equal length")
    return list(zip(reference.chunk(k), (entry[0] for entry in reference_caption)))


class ActionPrismEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_ActionPrismEncode", "Action Prism Encode", "EchoReel",
            "Runs the Action Prism once on a reference video: its clean VAE latents plus the reference caption and "
            "the prompt give the action features (both guidance branches). Connect `add_to` to combine several "
            "reference videos, or give several clips at once: reference frames of k equal clips with k caption entries "
            "(Find Reference Video with count k).",
            inputs=[
                echoreel_input(),
                vae_input("The checkpoint's VAE, to encode the reference frames."),
                io.Image.Input("reference", tooltip="Reference frames from Load Reference Video, at the EchoReel model's size."),
                io.Conditioning.Input("reference_caption", tooltip="The reference video's caption, encoded with CLIP Text Encode; "
                                      "k entries (Find Reference Video) split the frames into k reference clips."),
                io.Conditioning.Input("positive", tooltip="The prompt of the video to generate."),
                io.Conditioning.Input("negative", tooltip="The negative (or empty) prompt: the unconditional branch keeps the same reference, as official."),
                seed_input(0, "Seed of the VAE posterior sample of the reference latents."),
                io.Combo.Input("posterior", options=POSTERIOR, default=POSTERIOR[0],
                               tooltip="sample: a seeded posterior sample, as official; mean: the posterior mean."),
                ActionFeaturesType.Input("add_to", optional=True,
                                         tooltip="Features of other references: this reference is appended (same prompts)."),
            ],
            outputs=[ActionFeaturesType.Output("action_features", display_name="action_features",
                                               tooltip="The Prism's output for the prompt and for the negative prompt; computed once per run.")],
            aliases=["action prism", "motion features"],
        )

    @classmethod
    def execute(cls, echoreel, vae, reference, reference_caption, positive, negative, seed, posterior,
                add_to=None) -> io.NodeOutput:
        weights = echoreel.model
        prism = weights.config.prism
        size = (prism.latent_height * vae.downscale_ratio, prism.latent_width * vae.downscale_ratio)
        if tuple(reference.shape[1:3]) != size:
            raise ValueError(
                f"the reference frames are {reference.shape[2]}x{reference.shape[1]} but these EchoReel weights need "
                f"{size[1]}x{size[0]} (width x height): set that size in Load Reference Video"
            )
        clips = reference_clips(reference, reference_caption)
        runtime.load_to_device(echoreel)
        device = echoreel.load_device
        autoencoder = core_vae(vae).to(device)
        generator = torch.Generator("cpu").manual_seed(seed)
        sample = check_option("posterior", posterior, POSTERIOR) != "mean"
        references = []
        for frames, caption in clips:
            with torch.no_grad():
                latents = encode_reference(autoencoder, frames_to_model_input(frames), generator, sample)
            references.append(Reference(latents.to(device), caption.to(device)))
        features = action_features(
            weights, text_context(positive, "positive").to(device), text_context(negative, "negative").to(device),
            references,
        )
        features = ActionFeatures(features.cond.cpu(), features.uncond.cpu(), features.frames_per_reference)
        if add_to is not None:
            if add_to.frames_per_reference != features.frames_per_reference:
                raise ValueError(
                    f"all references need the same frame count: {add_to.frames_per_reference} and {features.frames_per_reference}"
                )
            features = ActionFeatures(
                torch.cat([add_to.cond, features.cond], dim=1), torch.cat([add_to.uncond, features.uncond], dim=1),
                features.frames_per_reference,
            )
        return io.NodeOutput(features)


class ApplyEchoReel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_ApplyEchoReel", "Apply EchoReel to Model", "EchoReel",
            "Returns a copy of the MODEL with EchoReel as a model patch (the input model is untouched): any ComfyUI "
            "sampler then imitates the reference's motion; it composes with LoRAs and other patches. Strength scales "
            "the injected motion; start/end are percents of the denoising schedule, as ComfyUI's own. Optional: a "
            "Motion Schedule (strength over the steps), Motion Frame Weights (strength per frame) and a MASK (motion "
            "only inside it). After each sampling run the log (and VideoCrafter Sampler's text) reports how many "
            "integration layers ran at how many steps; a run in which none ran is an error.",
            inputs=[
                model_input("From Load VideoCrafter Checkpoint (or a LoRA or other patch after it)."),
                echoreel_input(),
                ActionFeaturesType.Input("action_features", tooltip="From Action Prism Encode."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="Scale of the injected residual (1 = as trained, 0 = the base model)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Where in the schedule EchoReel starts acting (0 = from pure noise)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Where in the schedule EchoReel stops acting (1 = to the end)."),
                ScheduleType.Input("schedule", optional=True,
                                   tooltip="From Motion Schedule: multiplies strength at each step's percent of the "
                                           "schedule (inside start/end). Unconnected: constant 1."),
                FrameWeightsType.Input("frame_weights", optional=True,
                                       tooltip="From Motion Frame Weights: multiplies the injected residual per "
                                               "generated frame. Unconnected: 1 on every frame."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Motion only inside the mask: (h, w) for every frame or one per frame, resized "
                                      "(area) to each integration layer's latent grid; 0 = exactly the base model's "
                                      "features there. Unconnected: everywhere."),
            ],
            outputs=[io.Model.Output("patched_model", display_name="MODEL", tooltip="The model with EchoReel applied.")],
            aliases=["apply motion"],
        )

    @classmethod
    def execute(cls, model, echoreel, action_features, strength, start_percent, end_percent, schedule=None,
                frame_weights=None, mask=None) -> io.NodeOutput:
        base = video_base_model(model, "model")
        if echoreel_patches(model):
            raise ValueError("this model already has EchoReel applied: give several references to one Action Prism "
                             "Encode (add_to) and apply once")
        echoreel.model.check_fits(base.preset, base.diffusion_model)
        width = echoreel.model.config.prism.tout_dim
        if action_features.cond.shape[-1] != width:
            raise ValueError(f"the action features are {action_features.cond.shape[-1]} wide, these EchoReel weights take {width}")
        if start_percent > end_percent:
            raise ValueError(f"start_percent {start_percent:g} is after end_percent {end_percent:g}: EchoReel would never act")
        patch = EchoReelPatch(echoreel, action_features, strength, start_percent, end_percent,
                              model.get_model_object("model_sampling"), [site.path for site in base.diffusion_model.sites],
                              schedule=schedule, frame_curve=frame_weights,
                              mask=None if mask is None else check_mask(mask.cpu(), "mask"))
        patched = model.clone()
        patched.set_model_patch(patch, SITE_PATCH)
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, REPORT_KEY, patch.outer_sample)
        return io.NodeOutput(patched)
