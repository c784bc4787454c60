"""Action Prism Encode and Apply EchoReel to Model."""

from __future__ import annotations

import dataclasses

import torch

from ..echoreel_core.echoreel.features import ActionFeatures, Reference, action_features, encode_reference
from ..echoreel_core.video_io import frames_to_model_input
from . import runtime
from .loaders import core_vae
from .types import ACTION_FEATURES, ECHOREEL, VIDEO_MODEL, AppliedEchoReel

POSTERIOR = ["sample (official)", "mean"]


def text_context(conditioning, what: str) -> torch.Tensor:
    """The (1, L, D) tensor of a one-entry CONDITIONING."""
    if len(conditioning) != 1:
        raise ValueError(f"{what}: expected one conditioning entry, got {len(conditioning)} (combine prompts before)")
    return conditioning[0][0]


class ActionPrismEncode:
    DESCRIPTION = (
        "Runs the Action Prism once on a reference video: its clean VAE latents plus the reference caption "
        "and the prompt give the action features (both guidance branches). Connect `add_to` to combine "
        "several reference videos."
    )
    CATEGORY = "EchoReel"
    FUNCTION = "encode"
    RETURN_TYPES = (ACTION_FEATURES,)
    RETURN_NAMES = ("action_features",)
    OUTPUT_TOOLTIPS = ("The Prism's output for the prompt and for the negative prompt; computed once per run.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "echoreel": (ECHOREEL, {"tooltip": "From Load EchoReel."}),
                "vae": ("VAE", {"tooltip": "The checkpoint's VAE, to encode the reference frames."}),
                "reference": ("IMAGE", {"tooltip": "Reference frames from Load Reference Video, at the EchoReel model's size."}),
                "reference_caption": ("CONDITIONING", {"tooltip": "The reference video's caption, encoded with VideoCrafter Text Encode."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt of the video to generate."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative (or empty) prompt: the unconditional branch keeps the same reference, as official."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Seed of the VAE posterior sample of the reference latents."}),
                "posterior": (POSTERIOR, {"default": POSTERIOR[0], "tooltip": "sample: a seeded posterior sample, as official; mean: the posterior mean."}),
            },
            "optional": {
                "add_to": (ACTION_FEATURES, {"tooltip": "Features of other references: this reference is appended (same prompts)."}),
            },
        }

    def encode(self, echoreel, vae, reference, reference_caption, positive, negative, seed, posterior, add_to=None):
        weights = echoreel.model
        prism = weights.config.prism
        size = (prism.latent_height * vae.downscale_ratio, prism.latent_width * vae.downscale_ratio)
        if tuple(reference.shape[1:3]) != size:
            raise ValueError(
                f"the reference frames are {reference.shape[2]}x{reference.shape[1]} but these EchoReel weights need "
                f"{size[1]}x{size[0]} (width x height): set that size in Load Reference Video"
            )
        runtime.load_to_device(echoreel)
        device = echoreel.load_device
        autoencoder = core_vae(vae).to(device)
        generator = torch.Generator("cpu").manual_seed(seed)
        with torch.no_grad():
            latents = encode_reference(autoencoder, frames_to_model_input(reference), generator, posterior != "mean")
        caption = text_context(reference_caption, "reference_caption").to(device)
        features = action_features(
            weights, text_context(positive, "positive").to(device), text_context(negative, "negative").to(device),
            [Reference(latents.to(device), caption)],
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
        return (features,)


class ApplyEchoReel:
    DESCRIPTION = (
        "Returns a copy of the video model with EchoReel applied (the input model is untouched); the sampler "
        "attaches it only while it runs. Strength scales the injected motion; start/end bound the fraction "
        "of the denoising steps in which it acts."
    )
    CATEGORY = "EchoReel"
    FUNCTION = "apply"
    RETURN_TYPES = (VIDEO_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The video model with EchoReel applied.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (VIDEO_MODEL, {"tooltip": "From Load VideoCrafter Checkpoint."}),
                "echoreel": (ECHOREEL, {"tooltip": "EchoReel weights trained for this model's family and size."}),
                "action_features": (ACTION_FEATURES, {"tooltip": "From Action Prism Encode."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05, "tooltip": "Scale of the injected residual (1 = as trained, 0 = the base model)."}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fraction of the steps before EchoReel starts acting."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fraction of the steps after which EchoReel stops acting."}),
            }
        }

    def apply(self, model, echoreel, action_features, strength, start_percent, end_percent):
        if model.echoreel is not None:
            raise ValueError("this model already has EchoReel applied: combine references with Action Prism Encode's add_to")
        echoreel.model.check_fits(model.preset, model.unet.model)
        width = echoreel.model.config.prism.tout_dim
        if action_features.cond.shape[-1] != width:
            raise ValueError(f"the action features are {action_features.cond.shape[-1]} wide, these EchoReel weights take {width}")
        applied = AppliedEchoReel(echoreel, action_features, strength, start_percent, end_percent)
        return (dataclasses.replace(model, unet=model.unet.clone(), echoreel=applied),)
