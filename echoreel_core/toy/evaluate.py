"""Measure EchoReel on the toy world: motion fidelity with and without it, content leakage, detection.

For every pair of a held-out evaluation set (actions that neither the base model nor the Prism
trained on; reference objects that differ from the prompt's in colour and shape) it samples the
prompt twice with the same seed and steps, without and with EchoReel fed the reference video
(read from its mp4 file as a user's would be), tracks the object in every frame, and reports
(the measures are defined in echoreel_core/toy/metrics.py):
    motion fidelity: the mean cosine between the generated and the reference motion vectors;
    path fidelity: the same without the size changes (where the object goes, not how big it is),
        which tells a wrong path from a right path drawn by an object whose size flickers; over
        the pairs whose reference travels (a shrinking one stays in place: metrics.path_cosine);
    content leakage: the share of generated videos whose colour or shape follows the reference;
    detection rate: the share of generated frames in which an object is found;
per action, per group of held-out actions (the original three; the new motions: accelerating, the
arc, the corner, drifting while expanding; toy.world's HELD_OUT_GROUPS) and overall, as JSON, plus a
GIF grid (reference | without | with) per pair.

    python -m echoreel_core.toy.evaluate --out toy_eval            # the shipped toy model
    python -m echoreel_core.toy.evaluate --pairs 3 --steps 10      # a quick look
    python -m echoreel_core.toy.evaluate --library toy_library     # references found by retrieval
    python -m echoreel_core.toy.evaluate --sampler dpmpp_2m --steps 20   # as KSampler: dpmpp_2m, karras
    python -m echoreel_core.toy.evaluate --i2v                     # the image-to-video toy

An image-to-video model starts each pair from its target's first frame, where the reference's
object starts too (the pairs copy the reference's path), and the report adds how far frame 0's
object lies from the image's (start offset, pixels).

--sampler dpmpp_2m samples with the core's DPM++ 2M on the karras schedule, which equals ComfyUI's
KSampler with sampler dpmpp_2m and scheduler karras on the pack's native model up to float rounding
(tests/test_native_sampling.py); the default is the official DDIM (eta 1).

With --library, each pair's reference is not the pair's own but the best clip of a toy library
(echoreel_core/toy/library.py) for the target's caption naming its action ("a red circle
zigzagging"), found by echoreel_core.library with the model's own text encoder; the target clip and
the pair's own reference are never picked (with --other-objects, neither is a clip that shares the
prompt's colour or shape, as the pairs' own references never do). The reference caption is the
library's, the prompt the pair's (which names only the actions the base model knows), and every
measure is taken against the reference used.
"""

from __future__ import annotations

import argparse
import json
import math
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..loading.checkpoints import load_video_model
from ..training.data import load_entries
from ..echoreel.features import Reference, action_features, encode_reference
from ..echoreel.weights import EchoReel, load_echoreel
from ..library import LEXICAL_WEIGHT, Searcher, TextEmbedder, update_index
from ..models.video_model import VideoModel
from ..pipelines.generate import SAMPLERS, EchoReelGuidance, SamplingSettings, decode_to_frames, generate_latents, prepare_image
from ..common.threads import add_threads_argument, configure_threads
from ..video_io import frames_to_model_input, read_video_frames, write_video
from . import metrics
from .models import SHIPPED_DIR, TOY_ECHOREEL_FILE, TOY_I2V_ECHOREEL_FILE, TOY_I2V_MODEL_FILE, TOY_MODEL_FILE, shipped
from .world import DEFAULT_SPLIT, HELD_OUT_GROUPS, World, caption, write_dataset

log = logging.getLogger("echoreel.toy.evaluate")


DEFAULT_PAIRS = 10 * len(DEFAULT_SPLIT.held_out)  # the dataset cycles through the held-out actions


@dataclass(frozen=True)
class EvalSettings:
    steps: int = 25
    cfg: float = 7.5
    seed: int = 1234  # per pair: seed + index
    strength: float = 1.0
    sampler: str = "ddim"  # pipeline.SAMPLERS
    start: float = 0.0  # EchoReel's window: percents of the schedule (timestep (1 - p) * 999), as the nodes'
    end: float = 1.0


@dataclass(frozen=True)
class Outcome:
    """What the tracker saw in one video."""

    cosine: float  # motion cosine with the reference
    path_cosine: float | None  # the same over positions only (None: the reference stays in place)
    detected: float  # share of frames with an object
    colour: str | None  # majority over the detected frames (None: nothing detected)
    shape: str | None
    start_offset: float | None = None  # I2V: pixels between frame 0's object and the given image's (None: not found)


@dataclass
class PairResult:
    action: str
    prompt: str
    reference_caption: str
    prompt_object: tuple[str, str]  # (colour, shape)
    reference_object: tuple[str, str]
    without: Outcome
    with_echoreel: Outcome
    round_trip: Outcome  # the reference through the VAE and back: the ceiling the VAE allows
    reference_video: str = ""  # the reference used (a library clip with --library)
    reference_action: str = ""  # that clip's action (the pair's own with hand-picked references)


@dataclass(frozen=True)
class PickedReference:
    """A reference chosen for a pair instead of its own: the file, its caption, its clip fields."""

    path: Path
    caption: str
    clip: dict  # ClipSpec fields (action, colour, shape, ...)
    score: float


class LibraryPicker:
    """Picks each pair's reference from a toy library by caption retrieval (module docstring).
    The library is indexed (incrementally) with the model's own text encoder."""

    def __init__(self, model: VideoModel, folder: str | Path, lexical_weight: float = LEXICAL_WEIGHT,
                 other_objects: bool = False):
        embedder = TextEmbedder(model.text_encoder, model.tokenizer)
        index, report = update_index(folder, embedder)
        log.info("library %s: %s", folder, report.summary())
        self.searcher = Searcher(index, embedder, lexical_weight)
        self.other_objects = other_objects  # only clips whose colour and shape both differ from the prompt's

    def __call__(self, extra: dict) -> PickedReference:
        target, own = extra["target_clip"], extra["reference_clip"]
        query = caption(target["colour"], target["shape"], target["action"])

        def exclude(entry) -> bool:
            clip = entry.extra.get("clip") or {}
            same_object = clip.get("colour") == target["colour"] or clip.get("shape") == target["shape"]
            return clip in (target, own) or (self.other_objects and same_object)

        hits = self.searcher.search(query, 1, exclude=exclude)
        if not hits:
            raise ValueError(f"the library {self.searcher.index.folder} has no clip for {query!r}")
        hit = hits[0]
        return PickedReference(self.searcher.index.folder / hit.entry.video, hit.entry.caption,
                               hit.entry.extra.get("clip", {}), hit.score)


def _outcome(frames: torch.Tensor, reference_track: metrics.Track, world: World,
             start: metrics.Detection | None = None) -> Outcome:
    """What the tracker sees in `frames`; `start`: the I2V image's object, which frame 0 should keep."""
    track = metrics.track(frames, colours=world.colours, shapes=world.shapes)
    seen = metrics.video_object(track) or (None, None)
    offset = None
    if start is not None and track[0] is not None:
        offset = math.dist((track[0].x, track[0].y), (start.x, start.y))
    return Outcome(metrics.motion_cosine(track, reference_track), metrics.path_cosine(track, reference_track),
                   metrics.detection_rate(track), *seen, start_offset=offset)


def without_and_with(model: VideoModel, echoreel: EchoReel, prompt: str, reference_latents: torch.Tensor,
                     reference_caption: str, settings: SamplingSettings, strength: float = 1.0,
                     progress: Callable[[str, int], None] | None = None, image: torch.Tensor | None = None,
                     window: tuple[float, float] = (0.0, 1.0)):
    """The prompt sampled twice with the same seed and steps, without and with EchoReel fed the
    reference latents (1, c, t, h, w): two (t, H, W, 3) videos. The texts are encoded once.
    progress(run, steps done) is called after every step of each run ("without"/"with EchoReel").
    `image` (H, W, 3) in [0, 1]: an image-to-video model's first frame (as `pipelines.generate.image_to_video`:
    the UNet gets its image tokens, the negative branch a mid-grey image's; the Prism the texts).
    `window`: EchoReel's (start, end) percents of the schedule."""
    context, negative = model.encode_text([prompt]), model.encode_text([""])
    features = action_features(echoreel, context, negative, [Reference(reference_latents,
                                                                       model.encode_text([reference_caption]))])
    guide = EchoReelGuidance(echoreel, features, strength, *window)
    if model.preset.is_i2v:
        if image is None:
            raise ValueError(f"{model.preset.name} is an image-to-video model: give the first frame (image=)")
        pixels = prepare_image(image, settings.height, settings.width)
        context = torch.cat([context, model.encode_image(pixels)], dim=1)
        negative = torch.cat([negative, model.encode_image(None)], dim=1)
    videos = []
    for run, g in (("without EchoReel", None), ("with EchoReel", guide)):
        callback = (lambda i, x, x0, run=run: progress(run, i + 1)) if progress is not None else None
        videos.append(decode_to_frames(model, generate_latents(model, context, negative, settings, callback, g)))
    return tuple(videos)


def evaluate_pair(model: VideoModel, echoreel: EchoReel, entry, extra: dict, settings: EvalSettings, index: int,
                  world: World, picked: PickedReference | None = None):
    """Sample one pair both ways; returns its PairResult and the (reference, without, with) frames.
    `picked`: a reference to use instead of the pair's own (its caption too)."""
    path, reference_caption = (entry.reference, entry.caption) if picked is None else (picked.path, picked.caption)
    reference, _, _ = read_video_frames(path, num_frames=world.frames, stride=world.stride,
                                        size=(world.height, world.width))  # (t, H, W, 3)
    sampling = SamplingSettings(height=world.height, width=world.width, frames=world.frames, fps=model.preset.fps,
                                steps=settings.steps, cfg=settings.cfg, seed=settings.seed + index,
                                sampler=settings.sampler)
    latents = encode_reference(model.vae, frames_to_model_input(reference), torch.Generator().manual_seed(index))
    image = start = None
    if model.preset.is_i2v:  # the target's first frame, which the reference's first frame matches in place
        image = read_video_frames(entry.target, num_frames=1, size=(world.height, world.width))[0][0]  # (H, W, 3)
        start = metrics.track(image[None], colours=world.colours, shapes=world.shapes)[0]
    without, with_echoreel = without_and_with(model, echoreel, entry.prompt, latents, reference_caption, sampling,
                                              settings.strength, image=image, window=(settings.start, settings.end))
    ref_track = metrics.track(reference, colours=world.colours, shapes=world.shapes)
    target, source = extra["target_clip"], (extra["reference_clip"] if picked is None else picked.clip)
    result = PairResult(
        extra["action"], entry.prompt, reference_caption, (target["colour"], target["shape"]),
        (source["colour"], source["shape"]), _outcome(without, ref_track, world, start),
        _outcome(with_echoreel, ref_track, world, start), _outcome(decode_to_frames(model, latents), ref_track, world),
        str(path), source.get("action", extra["action"]),
    )
    return result, (reference, without, with_echoreel)


def _mean(values: list[float] | list[bool]) -> float:
    """The mean, or a share of flags; NaN over none (leakage where no video had an object, path
    fidelity where every reference stays in place: 'n/a' in the table)."""
    return sum(values) / len(values) if values else float("nan")


def figures(rows: list[PairResult]) -> dict:
    """Means over pairs; leakage counts only videos with an object (toy-world.md), split into the
    colour and the shape that follow the reference, next to how often the prompt's were drawn."""
    out = {"pairs": len(rows), "reference_of_the_action": _mean([r.reference_action == r.action for r in rows])}
    for way in ("without", "with_echoreel", "round_trip"):
        outcomes = [(getattr(r, way), r) for r in rows]
        judged = [(o, r) for o, r in outcomes if o.colour is not None]
        leaks = [metrics.leaked((o.colour, o.shape), r.prompt_object, r.reference_object) for o, r in judged]
        colour, shape = [c for c, _ in leaks], [s for _, s in leaks]
        out[way] = {
            "motion_fidelity": sum(o.cosine for o, _ in outcomes) / len(rows),
            "path_fidelity": _mean([o.path_cosine for o, _ in outcomes if o.path_cosine is not None]),
            "detection_rate": sum(o.detected for o, _ in outcomes) / len(rows),
            "content_leakage": _mean([c or s for c, s in zip(colour, shape)]),
            "colour_leakage": _mean(colour),
            "shape_leakage": _mean(shape),
            "prompt_object": _mean([(o.colour, o.shape) == r.prompt_object for o, r in judged]),
        }
        offsets = [o.start_offset for o, _ in outcomes if o.start_offset is not None]
        if offsets:  # I2V: frame 0's object against the image's, over the videos with an object there
            out[way]["start_offset"] = sum(offsets) / len(offsets)
    return out


def summarise(results: list[PairResult]) -> dict:
    """figures() overall, per action, and per group of HELD_OUT_GROUPS that the results hold."""
    actions = sorted({r.action for r in results})
    groups = {name: [r for r in results if r.action in members] for name, members in HELD_OUT_GROUPS.items()}
    return {"overall": figures(results),
            "per_action": {a: figures([r for r in results if r.action == a]) for a in actions},
            "groups": {name: figures(rows) for name, rows in groups.items() if rows}}


def evaluate(model: VideoModel, echoreel: EchoReel, data_json: str | Path, settings: EvalSettings = EvalSettings(),
             pairs: int | None = None, out_dir: str | Path | None = None, grids: int = 6,
             picker: Callable[[dict], PickedReference] | None = None) -> dict:
    """Evaluate on the first `pairs` entries of an "eval" dataset (toy.world); writes report.json
    and the first `grids` GIF grids into out_dir when given. `picker(entry's JSON object)` chooses
    each pair's reference instead of the pair's own (LibraryPicker)."""
    entries, skips = load_entries(data_json)
    if skips:
        raise ValueError(f"{data_json}: {len(skips)} unusable entries, e.g. {skips[0].message()}")
    extras = json.loads(Path(data_json).read_text())
    world_meta = json.loads((Path(data_json).parent / "world.json").read_text())["world"]
    world = World(**world_meta)
    chosen = range(len(entries) if pairs is None else min(pairs, len(entries)))
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    results = []
    for i in chosen:
        started = time.perf_counter()
        picked = picker(extras[i]) if picker is not None else None
        result, videos = evaluate_pair(model, echoreel, entries[i], extras[i], settings, i, world, picked)
        results.append(result)
        log.info("%d/%d %s: cosine without %.3f with %.3f (%.1f s)", i + 1, len(chosen), result.action,
                 result.without.cosine, result.with_echoreel.cosine, time.perf_counter() - started)
        if out is not None and i < grids:
            write_video(out / f"grid_{i:02d}_{result.action}.gif", metrics.grid(*videos), fps=world.fps)
    report = summarise(results)
    report["settings"] = {**settings.__dict__, "data": str(data_json),
                          "references": "retrieved" if picker is not None else "the pairs' own"}
    report["pairs"] = [asdict(r) for r in results]
    if out is not None:
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _cell(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def format_report(report: dict) -> str:
    """A table: one row per action, each group's actions followed by the group's row, then
    overall; each cell 'without / with EchoReel'."""
    i2v = "start_offset" in report["overall"]["with_echoreel"]
    lines = ["action        pairs  motion fidelity  path fidelity    content leakage (colour, shape)  objects found"
             "  prompt's object  | VAE round trip: fidelity" + ("  | start offset, px" if i2v else "")]
    per_action, groups = report["per_action"], report.get("groups", {})
    rows, listed = [], set()
    for group, members in HELD_OUT_GROUPS.items():
        rows += [(a, per_action[a]) for a in members if a in per_action]
        listed.update(members)
        if group in groups:
            rows.append((f"[{group}]", groups[group]))
    rows += [(a, f) for a, f in per_action.items() if a not in listed] + [("overall", report["overall"])]
    for name, f in rows:
        w, e = f["without"], f["with_echoreel"]
        lines.append(
            f"{name:<13} {f['pairs']:>5}  {w['motion_fidelity']:>6.3f} / {e['motion_fidelity']:<6.3f}"
            f"  {_cell(w['path_fidelity']):>6} / {_cell(e['path_fidelity']):<6}"
            f"  {w['content_leakage']:>4.0%} / {e['content_leakage']:<4.0%} ({e['colour_leakage']:.0%}, "
            f"{e['shape_leakage']:.0%})        {w['detection_rate']:>5.1%} / {e['detection_rate']:<6.1%}"
            f" {w['prompt_object']:>4.0%} / {e['prompt_object']:<4.0%}    | {f['round_trip']['motion_fidelity']:.3f}"
            + (f"                    | {w.get('start_offset', float('nan')):.1f} / {e.get('start_offset', float('nan')):.1f}"
               if i2v else ""))
    overall = report["overall"]
    if report.get("settings", {}).get("references") == "retrieved":
        lines.append(f"references retrieved from a library: {overall['reference_of_the_action']:.0%} of them show the "
                     f"pair's action")
    return "\n".join(lines)


def shipped_defaults() -> str:
    """The full paths of the default files, for --help's epilog: the description is printed raw,
    so a long path is never broken across lines as argparse wraps option help."""
    return (f"defaults (shipped with the pack):\n  --model     {SHIPPED_DIR / TOY_MODEL_FILE}\n"
            f"  --echoreel  {SHIPPED_DIR / TOY_ECHOREEL_FILE}\n"
            f"with --i2v:\n  --model     {SHIPPED_DIR / TOY_I2V_MODEL_FILE}\n"
            f"  --echoreel  {SHIPPED_DIR / TOY_I2V_ECHOREEL_FILE}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m echoreel_core.toy.evaluate", description=__doc__,
                                     epilog=shipped_defaults(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="base model (default: the shipped toy model, path below); an image-to-video "
                                        "model starts each pair from its target's first frame")
    parser.add_argument("--i2v", action="store_true",
                        help="default to the shipped image-to-video toy and its EchoReel weights (paths below)")
    parser.add_argument("--echoreel", help="EchoReel weights (default: the shipped toy weights, path below)")
    parser.add_argument("--data", help=f"an eval dataset JSON from toy.world (default: {DEFAULT_PAIRS} held-out pairs, "
                                       "10 of each held-out action, seed 0, "
                                       "written to a temporary folder)")
    parser.add_argument("--pairs", type=int, help="evaluate only the first N pairs")
    parser.add_argument("--steps", type=int, default=EvalSettings.steps, help="sampling steps (default %(default)s)")
    parser.add_argument("--sampler", choices=SAMPLERS, default=EvalSettings.sampler,
                        help="ddim: the official sampler (default); dpmpp_2m: DPM++ 2M on the karras schedule, as "
                             "ComfyUI's KSampler runs it")
    parser.add_argument("--cfg", type=float, default=EvalSettings.cfg)
    parser.add_argument("--strength", type=float, default=EvalSettings.strength)
    parser.add_argument("--start", type=float, default=EvalSettings.start,
                        help="EchoReel from this percent of the schedule (0: the first, noisiest step)")
    parser.add_argument("--end", type=float, default=EvalSettings.end,
                        help="EchoReel until this percent (1: the last step; 0.4: timesteps >= 599 only)")
    parser.add_argument("--out", help="folder for report.json and GIF grids")
    parser.add_argument("--library", help="a toy library (python -m echoreel_core.toy.library): pick each pair's "
                                          "reference from it by retrieval instead of using the pair's own")
    parser.add_argument("--other-objects", action="store_true",
                        help="with --library: only clips whose colour and shape both differ from the prompt's, as "
                             "the pairs' own references do")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    log.info("%s", configure_threads(args.threads))
    model = load_video_model(args.model or shipped(TOY_I2V_MODEL_FILE if args.i2v else TOY_MODEL_FILE))
    echoreel = load_echoreel(args.echoreel or shipped(TOY_I2V_ECHOREEL_FILE if args.i2v else TOY_ECHOREEL_FILE))
    settings = EvalSettings(args.steps, args.cfg, strength=args.strength, sampler=args.sampler, start=args.start,
                            end=args.end)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or write_dataset(tmp, "eval", args.pairs or DEFAULT_PAIRS, seed=0)
        picker = LibraryPicker(model, args.library, other_objects=args.other_objects) if args.library else None
        report = evaluate(model, echoreel, data, settings, args.pairs, args.out, picker=picker)
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
