"""Find Reference Video: a prompt in, the best-matching clips of a captioned library out."""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import io, ui

from ..echoreel_core.library import INDEX_FILE, Index, LibraryError, Searcher, TextEmbedder, update_index
from ..echoreel_core.library.sources import caption_files
from ..echoreel_core.video_io import read_video_frames
from . import runtime
from .common import check_option, reference_size_inputs, schema, seed_input
from .conditioning import encode_prompt
from .video import RESIZE_MODES

LIBRARY_FOLDER = "echoreel_library"  # models/echoreel_library, and any extra_model_paths.yaml adds
INPUT_PREFIX = "input/"
MAX_RESULTS = 16


def register_library_folder() -> None:
    """models/echoreel_library as a ComfyUI model folder (extra_model_paths.yaml can add more)."""
    if LIBRARY_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(LIBRARY_FOLDER, os.path.join(folder_paths.models_dir, LIBRARY_FOLDER))


def _roots(name: str) -> tuple[list[str], str]:
    """The folders a library name is looked up in, and the name inside them."""
    register_library_folder()
    if name.startswith(INPUT_PREFIX):
        return [folder_paths.get_input_directory()], name[len(INPUT_PREFIX):]
    return folder_paths.get_folder_paths(LIBRARY_FOLDER), name


def _is_library(path: str) -> bool:
    """A folder with an index or a top-level caption file (JSON, CSV); a folder of videos with
    sidecar .txt files only needs a first `python -m echoreel_core.library index` to be listed."""
    try:
        return os.path.isfile(os.path.join(path, INDEX_FILE)) or bool(caption_files(Path(path)))
    except OSError:
        return False


def library_names() -> list[str]:
    """`input/<folder>` for libraries in ComfyUI's input folder, `<folder>` for those in the
    echoreel_library folders. The retrieval example's toy library is written into the input folder
    here the first time (not at import: ComfyUI sets --input-directory after importing packs)."""
    runtime.provide_example_library()
    names = []
    for prefix, roots in ((INPUT_PREFIX, [folder_paths.get_input_directory()]), ("", _roots("")[0])):
        for root in roots:
            if not os.path.isdir(root):
                continue
            for entry in sorted(os.scandir(root), key=lambda e: e.name):
                if entry.is_dir() and not entry.name.startswith(".") and _is_library(entry.path):
                    name = prefix + entry.name
                    if name not in names:
                        names.append(name)
    return names


def library_path(name: str) -> str:
    """The folder of library `name`; ValueError for a name that leads out of its folders."""
    roots, inner = _roots(name)
    runtime.check_file_name(inner, roots)
    if not inner.strip() or os.path.normpath(inner) == os.curdir:
        raise ValueError(f'"{name}": name a library folder inside {" or ".join(roots)}')
    for root in roots:
        path = os.path.join(root, inner)
        if os.path.isdir(path):
            return path
    raise FileNotFoundError(f"{name}: no such library folder in {' or '.join(roots)}")


def text_encoder_tools(clip):
    """The one place that knows what the text encoder input is: the embedder that retrieval uses
    (the core text tower that Load VideoCrafter Checkpoint keeps on its CLIP, whose pooled
    embeddings the library index holds) and a function from captions to one CONDITIONING entry
    each (the CLIP itself, as CLIP Text Encode)."""
    text_encoder = getattr(clip, "echoreel_text_encoder", None)
    if text_encoder is None:
        raise ValueError("Find Reference Video: connect the CLIP output of Load VideoCrafter Checkpoint directly "
                         "(other CLIPs, or ones changed by other nodes, have no caption embedder)")
    runtime.load_to_device(text_encoder.patcher)
    embedder = TextEmbedder(text_encoder.patcher.model, text_encoder.tokenizer)

    def conditioning(texts: list[str]) -> list:
        return [entry for text in texts for entry in encode_prompt(clip, text)]

    return embedder, conditioning


def library_index(folder: str, embedder: TextEmbedder) -> Index:
    """The folder's index, brought up to date (new or changed files only) and saved when the folder
    is writable; an index from another text encoder is refused, naming both."""
    bar = runtime.Progress()
    index, report = update_index(folder, embedder, progress=lambda done, total, skipped: bar.update(done, total=total),
                                 save=os.access(folder, os.W_OK))
    if report.probed or report.embedded or report.removed:
        logging.info("Find Reference Video: %s: %s", folder, report.summary())
    for kind, count in sorted(report.counts().items()):
        logging.warning("Find Reference Video: %s: %d skipped (%s); `python -m echoreel_core.library index %s` "
                        "lists them", folder, count, kind, folder)
    return index


class FindReferenceVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "EchoReel_FindReferenceVideo", "Find Reference Video", "EchoReel",
            "Finds the clips of a captioned video library that best match the prompt (caption words by BM25 "
            "and the text encoder's caption embeddings) and decodes them as Load Reference Video does. With "
            "count > 1 the frames hold the clips one after another and reference_caption one entry per clip: "
            "Action Prism Encode then uses them all (multi-reference). The index is built or updated on the fly.",
            inputs=[
                io.Clip.Input("text_encoder", tooltip="The CLIP of Load VideoCrafter Checkpoint: embeds the prompt "
                                      "and the captions (an index built by another model's encoder is refused)."),
                io.Combo.Input("library", options=library_names(),
                               tooltip="A folder of videos and captions: input/<folder> in ComfyUI's input folder, or "
                                       "<folder> in models/echoreel_library."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="What the reference should show; usually the prompt of the video to generate."),
                io.Int.Input("count", default=1, min=1, max=MAX_RESULTS,
                             tooltip="How many clips to return (the best first); several feed the multi-reference path."),
                seed_input(0, "Orders clips of equal score (e.g. the same caption): another seed picks another of them."),
                io.Int.Input("frames", default=16, min=1, max=4096, tooltip="Frames to take from each clip (16 as official)."),
                io.Int.Input("stride", default=4, min=1, max=1000, tooltip="Take every n-th frame (4 as official)."),
                *reference_size_inputs(),
                io.Combo.Input("resize", options=RESIZE_MODES, default=RESIZE_MODES[0],
                               tooltip="squash: stretch to the size, as the official loader; crop: keep the aspect ratio and crop the centre."),
                io.String.Input("caption_filter", default="", optional=True,
                                tooltip="Words every chosen caption must contain; write -word to exclude captions with it."),
            ],
            outputs=[
                io.Image.Output("selected_frames", display_name="frames",
                                tooltip="The chosen clips' frames, (count x frames, h, w, 3) in 0..1, one clip after another."),
                io.Int.Output("frame_count", display_name="frame_count", tooltip="Frames per clip."),
                io.Float.Output("fps", display_name="fps", tooltip="The best clip's own frame rate."),
                io.String.Output("caption", display_name="caption", tooltip="The chosen clips' captions, one per line, the best first."),
                io.Conditioning.Output("reference_caption", display_name="reference_caption",
                                       tooltip="The captions encoded by the text encoder, one entry per clip: Action Prism Encode's reference_caption."),
            ],
            aliases=["retrieve reference", "search videos", "video library"],
        )

    @classmethod
    def fingerprint_inputs(cls, library, **kwargs):
        """Changes when the library's index or caption files change, or a file is added to or removed
        from any of its folders (their modification times; a video rewritten in place under the
        same name is seen by the next run that has another reason to run)."""
        try:
            folder = library_path(library)
        except (ValueError, FileNotFoundError):
            return float("nan")
        h = hashlib.blake2b(digest_size=16)
        paths = [os.path.join(folder, INDEX_FILE)] + [str(p) for p in caption_files(Path(folder))]
        for root, dirs, _ in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            paths.append(root)
        for path in paths:
            if os.path.exists(path):
                h.update(f"{path}:{os.stat(path).st_mtime_ns}".encode())
        return h.hexdigest()

    @classmethod
    def validate_inputs(cls, library: str) -> bool | str:
        try:
            library_path(library)
        except (ValueError, FileNotFoundError) as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, text_encoder, library, prompt, count, seed, frames, stride, width, height, resize,
                caption_filter="") -> io.NodeOutput:
        mode = "squash" if check_option("resize", resize, RESIZE_MODES).startswith("squash") else "crop"
        if not prompt.strip():
            raise ValueError("Find Reference Video: the prompt is empty: say what the reference should show")
        folder = library_path(library)
        embedder, conditioning = text_encoder_tools(text_encoder)
        try:
            index = library_index(folder, embedder)
        except LibraryError as error:
            raise ValueError(f"Find Reference Video: {error}") from None
        hits = Searcher(index, embedder).search(prompt, count, seed, caption_filter or "")
        if not hits:
            raise ValueError(f"Find Reference Video: no clip of {library} ({len(index)} indexed) matches"
                             + (f" the caption filter {caption_filter!r}" if caption_filter else ""))
        if len(hits) < count:
            logging.warning("Find Reference Video: only %d of the %d clips asked for match", len(hits), count)
        clips, fps = [], None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for hit in hits:
                pixels, info, _ = read_video_frames(os.path.join(folder, hit.entry.video), num_frames=frames,
                                                    stride=stride, size=(height, width), resize_mode=mode)
                clips.append(pixels)
                fps = float(info.fps) if fps is None else fps
        for warning in caught:
            logging.warning("Find Reference Video: %s", warning.message)
        captions = [hit.entry.caption for hit in hits]
        lines = [f"{n}. {hit.entry.video}  score {hit.score:.3f} (lexical {hit.lexical:.3f}, embedding "
                 f"{hit.embedding:.3f}): {hit.entry.caption}" for n, hit in enumerate(hits, 1)]
        return io.NodeOutput(torch.cat(clips), frames, fps, "\n".join(captions), conditioning(captions),
                             ui=ui.PreviewText("\n".join(lines)))
