"""The ComfyUI services the nodes use, in one place, feature-detected across ComfyUI versions.

Only services present in both the 2024 ComfyUI and the newest one are relied on
(ModelPatcher, load_models_gpu, ProgressBar, folder_paths, model_management interrupt checks);
newer options are used when their signature shows them. Every file name a node takes passes
`check_file_name`, so that nodes read only inside ComfyUI's folders.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import time
import uuid

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy.model_patcher import ModelPatcher

from ..echoreel_core.common.files import WriteError, atomic_write, make_folder
from ..echoreel_core.toy.library import EXAMPLE_LIBRARY, EXAMPLE_PER_ACTION, write_library
from ..echoreel_core.toy.models import SHIPPED_DIR, TOY_FIRST_FRAME_FILE, TOY_REFERENCE_FILE

MODEL_FOLDERS = {"videocrafter": ("videocrafter", "checkpoints"), "echoreel": ("echoreel",),
                 "echoreel_motion": ("echoreel_motion",)}
WEIGHT_EXTENSIONS = {".safetensors", ".ckpt", ".pt", ".pth", ".sft"}
MOTION_EXTENSIONS = {".safetensors"}  # motion files (echoreel_core/motion): Save Motion writes, Load Motion lists


def register_model_folders() -> None:
    """models/videocrafter and models/echoreel, with the weight extensions listed, plus the pack's
    shipped toy model in each, so that the example workflows run with nothing to download; and
    models/echoreel_motion, where Save Motion writes motion files and Load Motion lists them, plus
    the shipped toy motion file's folder (after it: Save Motion writes to the first folder)."""
    for name in ("videocrafter", "echoreel"):
        path = os.path.join(folder_paths.models_dir, name)
        if name not in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path(name, path)
        paths, extensions = folder_paths.folder_names_and_paths[name]
        shipped = str(SHIPPED_DIR / name)
        folder_paths.folder_names_and_paths[name] = (
            list(paths) + ([shipped] if shipped not in paths else []), set(extensions) | WEIGHT_EXTENSIONS
        )
    if "echoreel_motion" not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path("echoreel_motion", os.path.join(folder_paths.models_dir, "echoreel_motion"))
    paths, extensions = folder_paths.folder_names_and_paths["echoreel_motion"]
    shipped = str(SHIPPED_DIR / "echoreel_motion")
    folder_paths.folder_names_and_paths["echoreel_motion"] = (
        list(paths) + ([shipped] if shipped not in paths else []), set(extensions) | MOTION_EXTENSIONS
    )


def provide_example_input() -> None:
    """Copy the toy reference video and the image-to-video toy's first frame into ComfyUI's input
    folder once each, if absent, so that the example workflows find them and the upload widgets
    preview them like any upload. Atomically: a copy cut short would otherwise stay, broken, since
    only an absent file is copied. An input folder that cannot be written costs the examples only
    (a warning), not the node's widget."""
    for name in (TOY_REFERENCE_FILE, TOY_FIRST_FRAME_FILE):
        source = SHIPPED_DIR / name
        target = os.path.join(folder_paths.get_input_directory(), source.name)
        if source.is_file() and not os.path.exists(target):
            try:
                make_folder(os.path.dirname(target))
                atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
            except WriteError as error:
                logging.warning("EchoReel: no example input %s: %s", source.name, error)


def provide_example_library() -> None:
    """Write the toy reference library (`python -m echoreel_core.toy.library <input>/toy_library
    --per-action 2`: 32 captioned clips, about 300 KB, about a second) into ComfyUI's input folder
    once, if absent, so that the retrieval example workflow finds it. Written in a hidden folder
    next to it and renamed into place, so a write cut short never leaves a half library under the
    name (the hidden folder is not listed, and the next start writes it again). An input folder
    that cannot be written costs the example only (a warning)."""
    root = folder_paths.get_input_directory()
    target = os.path.join(root, EXAMPLE_LIBRARY)
    if os.path.exists(target):
        return
    partial = None
    try:
        make_folder(root)
        partial = os.path.join(root, f".{EXAMPLE_LIBRARY}.partial-{uuid.uuid4().hex[:12]}")
        os.mkdir(partial)
        start, threads = time.perf_counter(), torch.get_num_threads()
        torch.set_num_threads(1)  # tiny tensors: more threads only fight (5 s instead of 1 on a busy 2-core machine)
        try:
            write_library(partial, EXAMPLE_PER_ACTION)
        finally:
            torch.set_num_threads(threads)
        os.rename(partial, target)
        partial = None
        logging.info("EchoReel: wrote the example reference library %s (%.1f s)", target, time.perf_counter() - start)
    except Exception as error:  # noqa: BLE001 - the example's library must never cost the node its list
        if not os.path.isdir(target):  # else another process wrote it first
            logging.warning("EchoReel: no example reference library in %s: %s", root, error)
    finally:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)


def check_file_name(name: str, folders: list[str]) -> None:
    """Refuse a file name that leads out of the folder it is looked up in: an absolute path, a
    drive, or `..` climbing above it. ComfyUI joins a widget's value to its folder as given, and a
    workflow (which anyone who reaches the server can send) sets the value, so without this a node
    would read any file the server can. Links inside the folders are the owner's doing and followed."""
    normal = os.path.normpath(name)
    climbs = normal == os.pardir or normal.startswith(os.pardir + os.sep)
    if os.path.isabs(name) or os.path.splitdrive(name)[0] or climbs:
        raise ValueError(f'refused "{name}": files must be inside {" or ".join(folders)}')


def input_file(name: str) -> str:
    """The path of a file widget's value: `name` in ComfyUI's input folder, or in the output or
    temp folder that a ` [output]` / ` [temp]` annotation names (ComfyUI's own way to refer to
    files it made); ValueError for a name that leads elsewhere."""
    bare, folder = folder_paths.annotated_filepath(name)
    folder = folder or folder_paths.get_input_directory()
    check_file_name(bare, [folder])
    return os.path.join(folder, bare)


def model_files(kind: str) -> list[str]:
    files = []
    for folder in MODEL_FOLDERS[kind]:
        files += [f for f in folder_paths.get_filename_list(folder) if f not in files]
    return sorted(files)


def model_path(kind: str, name: str) -> str:
    """The file `name` in the model folders of `kind`. ComfyUI's get_full_path would strip a
    leading `/` or `..` and look the rest up inside; refusing such a name says what happened."""
    folders = [f"models/{f}" for f in MODEL_FOLDERS[kind]]
    check_file_name(name, folders)
    for folder in MODEL_FOLDERS[kind]:
        path = folder_paths.get_full_path(folder, name)
        if path is not None:
            return path
    raise FileNotFoundError(f"{name}: not found in {', '.join(folders)}")


def validate_model_file(kind: str, name: str) -> bool | str:
    """For VALIDATE_INPUTS: True, or the message naming the file and the folders searched."""
    try:
        model_path(kind, name)
    except (FileNotFoundError, ValueError) as error:
        return str(error)
    return True


def unet_patcher(module: torch.nn.Module) -> ModelPatcher:
    return ModelPatcher(module, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def text_encoder_patcher(module: torch.nn.Module) -> ModelPatcher:
    return ModelPatcher(module, load_device=mm.text_encoder_device(), offload_device=mm.text_encoder_offload_device())


def load_to_device(*patchers: ModelPatcher) -> None:
    """Load for code that runs modules directly (the Prism, the image encoder, the core's
    long-video loop): fully, since lowvram casting happens only inside ComfyUI's own sampling."""
    kwargs = {}
    if "force_full_load" in inspect.signature(mm.load_models_gpu).parameters:
        kwargs["force_full_load"] = True
    mm.load_models_gpu(list(patchers), **kwargs)


def check_interrupted() -> None:
    mm.throw_exception_if_processing_interrupted()


class Progress:
    """The progress bar of a node that loops by itself (the long-video sampler's steps, the library
    index's files), with a preview of the first frame when latents are given; each update is a
    cancel point. Samplers that run inside ComfyUI's sampling use its own callback instead
    (latent_preview.prepare_callback). `total` may come with the first update when it is not known
    before."""

    def __init__(self, total: int | None = None):
        self.total, self.bar, self.previewer = total, None, None

    def update(self, done: int, x0: torch.Tensor | None = None, total: int | None = None) -> None:
        check_interrupted()
        if self.bar is None:
            self.total = self.total if total is None else total
            self.bar = comfy.utils.ProgressBar(self.total)
        preview = None
        if x0 is not None:
            self.previewer = self.previewer or _previewer()
            if self.previewer is not None:
                frame = x0[:1, :, 0].float()  # (1, 4, h, w): the first frame of the first sample
                preview = self.previewer.decode_latent_to_preview_image("JPEG", frame)
        self.bar.update_absolute(done, self.total, preview)


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
