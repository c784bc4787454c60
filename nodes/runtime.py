"""The ComfyUI services the nodes use, in one place, feature-detected across ComfyUI versions.

Only services present in both the 2024 ComfyUI and the newest one are relied on
(ModelPatcher, load_models_gpu, ProgressBar, folder_paths, model_management interrupt checks);
newer options are used when their signature shows them.
"""

from __future__ import annotations

import inspect
import os
import shutil

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy.model_patcher import ModelPatcher

from ..echoreel_core.toy.models import SHIPPED_DIR, TOY_REFERENCE_FILE

MODEL_FOLDERS = {"videocrafter": ("videocrafter", "checkpoints"), "echoreel": ("echoreel",)}
WEIGHT_EXTENSIONS = {".safetensors", ".ckpt", ".pt", ".pth", ".sft"}


def register_model_folders() -> None:
    """models/videocrafter and models/echoreel, with the weight extensions listed, plus the pack's
    shipped toy model in each, so that the example workflows run with nothing to download."""
    for name in ("videocrafter", "echoreel"):
        path = os.path.join(folder_paths.models_dir, name)
        if name not in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path(name, path)
        paths, extensions = folder_paths.folder_names_and_paths[name]
        shipped = str(SHIPPED_DIR / name)
        folder_paths.folder_names_and_paths[name] = (
            list(paths) + ([shipped] if shipped not in paths else []), set(extensions) | WEIGHT_EXTENSIONS
        )


def provide_example_input() -> None:
    """Copy the toy reference video into ComfyUI's input folder once, if absent, so that the
    example workflows find it and the upload widget previews it like any upload."""
    source = SHIPPED_DIR / TOY_REFERENCE_FILE
    target = os.path.join(folder_paths.get_input_directory(), source.name)
    if source.is_file() and not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(source, target)


def model_files(kind: str) -> list[str]:
    files = []
    for folder in MODEL_FOLDERS[kind]:
        files += [f for f in folder_paths.get_filename_list(folder) if f not in files]
    return sorted(files)


def model_path(kind: str, name: str) -> str:
    for folder in MODEL_FOLDERS[kind]:
        path = folder_paths.get_full_path(folder, name)
        if path is not None:
            return path
    folders = ", ".join(f"models/{f}" for f in MODEL_FOLDERS[kind])
    raise FileNotFoundError(f"{name}: not found in {folders}")


def validate_model_file(kind: str, name: str) -> bool | str:
    """For VALIDATE_INPUTS: True, or the message naming the file and the folders searched."""
    try:
        model_path(kind, name)
    except FileNotFoundError as error:
        return str(error)
    return True


def unet_patcher(module: torch.nn.Module) -> ModelPatcher:
    return ModelPatcher(module, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def text_encoder_patcher(module: torch.nn.Module) -> ModelPatcher:
    return ModelPatcher(module, load_device=mm.text_encoder_device(), offload_device=mm.text_encoder_offload_device())


def load_to_device(*patchers: ModelPatcher) -> None:
    """Let ComfyUI decide what is resident; our plain modules need full loads, not lowvram casts."""
    kwargs = {}
    if "force_full_load" in inspect.signature(mm.load_models_gpu).parameters:
        kwargs["force_full_load"] = True
    mm.load_models_gpu(list(patchers), **kwargs)


def weight_dtype(choice: str, device: torch.device) -> torch.dtype:
    """'auto' is ComfyUI's choice for a UNet on that device (float32 on a CPU)."""
    if choice == "auto":
        return mm.unet_dtype(device) if device.type != "cpu" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[choice]


def check_interrupted() -> None:
    mm.throw_exception_if_processing_interrupted()


class Progress:
    """A ComfyUI progress bar with latent previews of the first frame; each update is a cancel point."""

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(total)
        self.total = total
        self.previewer = _previewer()

    def update(self, step: int, x0: torch.Tensor | None = None) -> None:
        check_interrupted()
        preview = None
        if self.previewer is not None and x0 is not None:
            frame = x0[:1, :, 0].float()  # (1, 4, h, w): the first frame of the first sample
            preview = self.previewer.decode_latent_to_preview_image("JPEG", frame)
        self.bar.update_absolute(step, self.total, preview)


def _previewer():
    try:
        import comfy.latent_formats
        import latent_preview

        return latent_preview.get_previewer(mm.get_torch_device(), comfy.latent_formats.SD15())
    except Exception:  # noqa: BLE001 - previews are optional; sampling must not depend on them
        return None


def tokenizer_merges_path() -> str:
    """ComfyUI ships the CLIP BPE merges with its SD1 tokenizer: the same data as OpenCLIP's."""
    import comfy.sd1_clip

    return os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer", "merges.txt")
