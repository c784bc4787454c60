"""The pack's samplers: VideoCrafter Sampler (the official DDIM through ComfyUI's sampling), the
official DDIM as a SAMPLER for SamplerCustomAdvanced, and the Long Video Sampler (Reuse and Diffuse).

VideoCrafter Sampler is a shortcut for: fps (and I2V image) conditioning, Empty Video Latent,
SamplerCustom with the official DDIM on the official grid, VideoCrafter Decode. The long-video
sampler runs the core's VidRD loop on the native MODEL's UNet, with EchoReel from its patch.
"""

from __future__ import annotations

from types import SimpleNamespace

import comfy.sample
import latent_preview
import torch
from comfy_api.latest import io, ui

from ..echoreel_core.pipelines.long_video import generate_long_latents
from ..echoreel_core.pipelines.generate import EchoReelGuidance, SamplingSettings, check_request, size_multiple
from ..echoreel_core.sampling.schedule import NoiseSchedule
from . import runtime
from .common import eta_input, model_input, prompt_inputs, schema, seed_input, vae_input, video_size_inputs
from .conditioning import image_tokens, with_values
from .echoreel_nodes import text_context
from .latents import as_video, decode_video
from .model import video_base_model
from .official_ddim import official_ddim_sampler, official_ddim_sigmas
from .patch import echoreel_patches


def sampler_inputs(frames_min: int, frames_tooltip: str) -> list[io.Input]:
    """The inputs both samplers take, in the order saved in workflows."""
    return [
        model_input(),
        *prompt_inputs(),
        vae_input("The checkpoint's VAE, to decode the frames."),
        *video_size_inputs(),
        io.Int.Input("frames", default=16, min=frames_min, max=256, tooltip=frames_tooltip),
        io.Int.Input("fps", default=28, min=1, max=120,
                     tooltip="The fps conditioning of VideoCrafter2, I2V and 1024 models (ignored by the others), "
                             "and the frame rate of the output video."),
        io.Int.Input("steps", default=50, min=1, max=1000, tooltip="DDIM steps (50 as official)."),
        io.Float.Input("cfg", default=12.0, min=1.0, max=100.0, step=0.5,
                       tooltip="Classifier-free guidance scale (12 as official; 1 runs only the prompt branch)."),
        eta_input(),
        seed_input(123, "The noise seed (drawn on the CPU: the same video on every device).", control=True),
    ]


IMAGE_INPUT_TOOLTIP = "The first-frame image for image-to-video models."


def sampler_outputs(what: str) -> list[io.Output]:
    return [
        io.Image.Output("images", display_name="frames", tooltip=f"{what}, (t, h, w, 3) in 0..1."),
        io.Latent.Output("latent", display_name="latent", tooltip="The video latents (b, 4, t, h, w), for VideoCrafter Decode."),
        io.Video.Output("video", display_name="video",
                        tooltip="The frames as a native VIDEO at the sampler's fps, for Save Video."),
    ]


def conditioned(base, positive, negative, fps: int, image, height: int, width: int):
    """The prompts with fps set and, for I2V, the image tokens (unless Image Conditioning set them)."""
    positive, negative = with_values(positive, {"fps": fps}), with_values(negative, {"fps": fps})
    if image is not None:
        if base.image_encoder is None:
            raise ValueError(f"{base.preset.name} is a text-to-video model: disconnect the image")
        positive = with_values(positive, {"image_context": image_tokens(base.image_encoder, image[:1], height, width)})
        negative = with_values(negative, {"image_context": image_tokens(base.image_encoder, None)})
    elif base.image_encoder is not None and "image_context" not in positive[0][1]:
        raise ValueError(f"{base.preset.name} is an image-to-video model: connect an image")
    return positive, negative


def core_view(base) -> SimpleNamespace:
    """What the core's checks and long-video loop use of a model: the UNet, preset and schedule."""
    sampling = base.model_sampling
    return SimpleNamespace(unet=base.diffusion_model, preset=base.preset,
                           schedule=NoiseSchedule(sampling.alphas_cumprod.cpu(),
                                                  None if sampling.scale_arr is None else sampling.scale_arr.cpu()))


class VideoCrafterSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_VideoCrafterSampler", "VideoCrafter Sampler", "EchoReel/sampling",
            "Samples a video with DDIM exactly as the official VideoCrafter/LVDM sampler (eta 1, cfg 12 by default), "
            "inside ComfyUI's sampling: EchoReel, LoRAs and other patches on the model apply. Connect an image for "
            "image-to-video models. KSampler runs the same MODEL with any other sampler. With EchoReel applied, its "
            "text shows the injection report: how many integration layers ran at how many steps, the residual's "
            "size next to the hidden state per UNet level, and any NaN/Inf.",
            inputs=sampler_inputs(1, "Frames to generate (the models were trained on 16).")
            + [io.Image.Input("image", optional=True, tooltip=IMAGE_INPUT_TOOLTIP)],
            outputs=sampler_outputs("The decoded frames"),
            aliases=["ddim", "text to video", "image to video"],
        )

    @classmethod
    def execute(cls, model, positive, negative, vae, width, height, frames, fps, steps, cfg, eta, seed,
                image=None) -> io.NodeOutput:
        base = video_base_model(model, "model")
        settings = SamplingSettings(height=height, width=width, frames=frames, fps=fps, steps=steps, cfg=cfg, eta=eta, seed=seed)
        settings.validate(size_multiple(core_view(base)))
        positive, negative = conditioned(base, positive, negative, fps, image, height, width)
        f = vae.downscale_ratio
        latent = torch.zeros(1, 4, frames, height // f, width // f)
        sigmas = official_ddim_sigmas(model.get_model_object("model_sampling"), steps)
        samples = comfy.sample.sample_custom(
            model, comfy.sample.prepare_noise(latent, seed), cfg, official_ddim_sampler(eta), sigmas, positive, negative,
            latent, callback=latent_preview.prepare_callback(model, len(sigmas) - 1), seed=seed,
        )
        decoded = decode_video(vae, samples)
        reports = [p.last_report.text() for p in echoreel_patches(model) if p.last_report is not None]
        text = "\n".join(reports) or "EchoReel is not applied to this model."
        return io.NodeOutput(decoded, {"samples": samples}, as_video(decoded, fps), ui=ui.PreviewText(text))


class OfficialDDIMSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_OfficialDDIM", "VideoCrafter Official DDIM (sampler)", "EchoReel/sampling",
            "The official VideoCrafter/LVDM DDIM as a SAMPLER for SamplerCustom / SamplerCustomAdvanced: with the "
            "ddim_uniform scheduler it reproduces the official sampler (its start from pure noise, its last step, "
            "one seeded noise stream).",
            inputs=[eta_input()],
            outputs=[io.Sampler.Output(tooltip="For SamplerCustom / SamplerCustomAdvanced.")],
            aliases=["ddim", "official sampler"],
        )

    @classmethod
    def execute(cls, eta) -> io.NodeOutput:
        return io.NodeOutput(official_ddim_sampler(eta))


class LongVideoSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_LongVideoSampler", "VideoCrafter Long Video Sampler", "EchoReel/sampling",
            "Samples a long video clip by clip with Reuse-and-Diffuse (VidRD): each clip continues the last one "
            "through reversed noise (FNR), past-dependent noise (PNS) and staged guidance of its first frames "
            "(DSG). Clips are decoded as soon as they are sampled. EchoReel applied to the model acts on every clip.",
            inputs=sampler_inputs(2, "Frames per clip (the models were trained on 16).") + [
                io.Int.Input("clips", default=4, min=1, max=64, tooltip="How many clips to chain."),
                io.Int.Input("overlap", default=4, min=0, max=255,
                             tooltip="M: frames of each clip guided by the previous clip (4 as VidRD)."),
                io.Float.Input("alpha", default=4.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Past-dependent noise: how much of the previous clip's reversed noise is reused (4 as VidRD)."),
                io.Float.Input("beta", default=0.4, min=0.0, max=1.0, step=0.05,
                               tooltip="Staged guidance: the fraction of the steps the first frames follow the previous clip (0.4 as VidRD)."),
                io.Boolean.Input("drop_overlap", default=False,
                                 tooltip="Drop the guided first frames of every clip after the first (off: keep them, as official)."),
                io.Image.Input("image", optional=True, tooltip=IMAGE_INPUT_TOOLTIP),
            ],
            outputs=sampler_outputs("All clips' decoded frames (clips x frames, minus the overlaps when drop_overlap is on)"),
            aliases=["long video", "reuse and diffuse", "vidrd"],
        )

    @classmethod
    def execute(cls, model, positive, negative, vae, width, height, frames, fps, steps, cfg, eta, seed,
                clips, overlap, alpha, beta, drop_overlap, image=None) -> io.NodeOutput:
        base = video_base_model(model, "model")
        view = core_view(base)
        settings = SamplingSettings(height=height, width=width, frames=frames, fps=fps, steps=steps, cfg=cfg, eta=eta, seed=seed)
        positive, negative = conditioned(base, positive, negative, fps, image, height, width)
        patches = echoreel_patches(model)
        runtime.load_to_device(model, *(p.weights for p in patches))  # the core loop runs the UNet directly
        check_request(view, settings, clips=clips)
        guidance = None
        if patches:
            patch = patches[0]
            if patch.controls:
                raise ValueError(f"the Long Video Sampler runs EchoReel with its strength and start/end only: "
                                 f"disconnect Apply EchoReel's {', '.join(patch.controls)} (or use KSampler or "
                                 "VideoCrafter Sampler)")
            guidance = EchoReelGuidance(patch.weights.model, patch.features, patch.strength, patch.start, patch.end)
        cond, uncond = branch_context(positive, "positive"), branch_context(negative, "negative")
        progress = runtime.Progress(clips * steps)
        decoded, latents = [], []

        def decode_clip(k: int, clip: torch.Tensor) -> None:  # as soon as a clip is sampled
            samples = clip.float().cpu() / base.preset.vae.scale_factor
            latents.append(samples)
            decoded.append(decode_video(vae, samples).cpu())

        generate_long_latents(
            view, [cond] * clips, uncond, settings, overlap, alpha, beta, drop_overlap, guidance,
            callback=lambda i, x, x0: progress.update(i + 1, x0), decode_clip=decode_clip,
        )
        runtime.check_interrupted()
        frames_out = torch.cat(decoded)
        return io.NodeOutput(frames_out, {"samples": torch.cat(latents, dim=2)}, as_video(frames_out, fps))


def branch_context(conditioning, what: str) -> torch.Tensor:
    """The UNet context of a one-entry CONDITIONING: its text tokens, then its image tokens (I2V)."""
    context = text_context(conditioning, what)
    image = conditioning[0][1].get("image_context")
    return context if image is None else torch.cat([context, image.to(context)], dim=1)
