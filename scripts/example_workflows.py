"""Build the example workflows and their thumbnails (a developer's tool, test-only set-up).

    .venv/bin/python scripts/example_workflows.py layout       # example_workflows/*.json and api/*.json
    .venv/bin/python scripts/example_workflows.py thumbnails   # example_workflows/*.jpg from real runs

Both start the test ComfyUI (scripts/setup_comfyui.sh) with this pack on 127.0.0.1. `layout` also
drives the browser (scripts/setup_browser.sh): every graph below is built in the served frontend
from its node definitions, each node sized to what its widgets need (the page's computeSize),
placed in columns with nothing overlapping, and saved with the page's own serialisers: the UI
file as the frontend saves it (version 0.4, no saved view, so the page fits the whole graph to the
window on opening) and the API copy as "Export (API)" writes it. `thumbnails` queues each API copy
at its own settings and writes a frame grid (256 px wide jpg) of the videos it saved.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pathlib
import shutil
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from comfyui_server import API_EXAMPLES, EXAMPLES, serve  # noqa: E402

from echoreel_core.toy.library import EXAMPLE_LIBRARY  # noqa: E402
from echoreel_core.toy.models import (  # noqa: E402
    SHIPPED_DIR, TOY_ECHOREEL_FILE, TOY_FIRST_FRAME_FILE, TOY_I2V_ECHOREEL_FILE, TOY_I2V_MODEL_FILE, TOY_MODEL_FILE,
    TOY_MOTION_FILE,
)

GAP_X, GAP_Y = 50, 40  # between columns, and between a node and the title bar of the next one
MIN_WIDTH = 280

TOY_MOTION = pathlib.PurePosixPath(TOY_MOTION_FILE).name


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# properties.models: the frontend's schema requires a `url` in each entry, and its missing-models
# dialog offers a download only from huggingface.co or civitai.com; any other address is shown with
# "Copy URL". No download address exists for the toy files (they ship with the pack, which puts
# their folder on ComfyUI's model paths, so they are never missing), so their entries carry a text
# in a data: URL that says so instead of an address that would fetch the wrong thing.
def toy_model_entry(relative: str) -> dict:
    """The entry of a shipped toy file, `relative` to the shipped folder (its first part: the model folder)."""
    path = pathlib.PurePosixPath(relative)
    where = pathlib.PurePosixPath("echoreel_core/toy/shipped") / path
    return {"name": path.name, "url": f"data:text/plain,ships with ComfyUI-EchoReel ({where}): nothing to download",
            "hash": sha256(SHIPPED_DIR / relative), "hash_type": "SHA256", "directory": path.parts[0]}


def node(key, type_, title=None, widgets=None, inputs=None, models=None, size=None) -> dict:
    """One node: widget values by name, inputs as {input: (source key, output name)}, and an
    optional smallest size (a Note, whose text box would otherwise get only one line)."""
    return {"key": key, "type": type_, "title": title, "widgets": widgets or {}, "inputs": inputs or {},
            "models": models, "size": size}


def encode(key, title, text) -> dict:
    """ComfyUI's own CLIP Text Encode on the checkpoint's CLIP."""
    return node(key, "CLIPTextEncode", title, {"text": text}, {"clip": ("ckpt", "CLIP")})


def reference(key, title=None, stride=4, size=(64, 64)) -> dict:
    return node(key, "EchoReel_LoadReferenceVideo", title, {
        "frames": 16, "stride": stride, "start": 0, "width": size[0], "height": size[1],
        "resize": "squash (official)", "video": "toy_reference.mp4"})


def prism(key, title=None, ref="reference", caption="caption", add_to=None) -> dict:
    inputs = {"echoreel": ("echoreel", "echoreel"), "vae": ("ckpt", "VAE"), "reference": (ref, "frames"),
              "reference_caption": (caption, "CONDITIONING"), "positive": ("prompt", "CONDITIONING"),
              "negative": ("negative", "CONDITIONING")}
    if add_to:
        inputs["add_to"] = (add_to, "action_features")
    return node(key, "EchoReel_ActionPrismEncode", title,
                {"seed": 0, "posterior": "sample (official)"}, inputs)


def apply(features="prism", mask=None) -> dict:
    inputs = {"model": ("ckpt", "MODEL"), "echoreel": ("echoreel", "echoreel"), "action_features": (features, "action_features")}
    if mask:
        inputs["mask"] = (mask, "MASK")
    return node("apply", "EchoReel_ApplyEchoReel", None, {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}, inputs)


def sampler(key, title=None, model=("apply", "MODEL"), size=(64, 64), steps=25, cfg=7.5, image=None, long=False) -> dict:
    widgets = {"width": size[0], "height": size[1], "frames": 16, "fps": 8, "steps": steps, "cfg": cfg, "eta": 1.0,
               "seed": 123, "control_after_generate": "fixed"}
    if long:
        widgets.update(clips=4, overlap=4, alpha=4.0, beta=0.4, drop_overlap=False)
    inputs = {"model": model, "positive": ("prompt", "CONDITIONING"), "negative": ("negative", "CONDITIONING"),
              "vae": ("ckpt", "VAE")}
    if image:
        inputs["image"] = image
    return node(key, "EchoReel_LongVideoSampler" if long else "EchoReel_VideoCrafterSampler", title, widgets, inputs)


def native_sampling(key="sampler", model=("apply", "MODEL"), size=(64, 64), steps=20, cfg=7.5) -> list[dict]:
    """The model-native path: fps conditioning on both prompts, KSampler on an Empty Video Latent,
    VideoCrafter Decode (whose `video` goes to Save Video) at the same fps."""
    return [
        node("fps", "EchoReel_VideoFps", None, {"fps": 8},
             {"positive": ("prompt", "CONDITIONING"), "negative": ("negative", "CONDITIONING")}),
        node("latent", "EchoReel_EmptyVideoLatent", None, {"width": size[0], "height": size[1], "frames": 16, "batch_size": 1},
             {"vae": ("ckpt", "VAE")}),
        node(key, "KSampler", None, {"seed": 123, "control_after_generate": "fixed", "steps": steps, "cfg": cfg,
                                     "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0},
             {"model": model, "positive": ("fps", "positive"), "negative": ("fps", "negative"),
              "latent_image": ("latent", "LATENT")}),
        node("decode", "EchoReel_DecodeVideo", None, {"fps": 8.0}, {"vae": ("ckpt", "VAE"), "samples": (key, "LATENT")}),
    ]


def save(key, prefix, source, title=None) -> dict:
    """Core Save Video on a VIDEO output (a sampler's or VideoCrafter Decode's): the frames at its fps, as mp4."""
    return node(key, "SaveVideo", title, {"filename_prefix": prefix, "format": "auto", "codec": "auto"},
                {"video": (source, "video")})


def toy_loaders(model=TOY_MODEL_FILE, echoreel=TOY_ECHOREEL_FILE) -> list[dict]:
    """The checkpoint and EchoReel loaders on shipped toy files (the text-to-video toy's by default)."""
    return [
        node("ckpt", "EchoReel_LoadVideoCrafterCheckpoint", None,
             {"ckpt_name": pathlib.PurePosixPath(model).name, "dtype": "auto"}, models=[toy_model_entry(model)]),
        node("echoreel", "EchoReel_LoadEchoReel", None, {"echoreel_name": pathlib.PurePosixPath(echoreel).name},
             models=[toy_model_entry(echoreel)]),
    ]


def prompts(prompt="a red circle", caption=("caption", "Reference caption", "a blue square")) -> list[dict]:
    return [encode("prompt", "Prompt", prompt), encode("negative", "Negative prompt", ""), encode(*caption)]


RETRIEVAL_PROMPT = "a red circle orbiting clockwise"
RETRIEVAL_NOTE = (
    "Only a prompt: Prompt text feeds both the video's prompt and Find Reference Video, which picks the "
    "library clip whose caption matches it best and gives its frames and caption to Action Prism Encode. "
    "After a run the node shows the clip it chose and its score.\n\n"
    "input/toy_library is a toy library of 40 captioned clips (20 actions) that the pack writes into ComfyUI's "
    "input folder on its first start; to write it again: python -m echoreel_core.toy.library "
    "<ComfyUI>/input/toy_library --per-action 2\n\n"
    "Your own library: a folder of videos with a captions.json ([{\"video\": ..., \"caption\": ...}]) or a "
    ".txt caption next to each video, in ComfyUI's input folder or in models/echoreel_library; refresh the "
    "page's node definitions (R) to list it. It is indexed with the checkpoint's CLIP (its text encoder) on first use."
)


SAVED_MOTION_NOTE = (
    "No reference video here: Load Motion reads the motion (the Action Prism's features) from a file in "
    "models/echoreel_motion. toy_orbit.safetensors ships with the pack: the toy reference (a blue square orbiting) "
    "encoded for the prompt \"a red circle\" and an empty negative prompt, by\n\n"
    "python -m echoreel_core.motion encode echoreel_core/toy/shipped/input/toy_reference.mp4 --caption \"a blue "
    "square\" --prompt \"a red circle\" --out toy_orbit.safetensors\n\n"
    "The features depend on the prompts they were encoded with: sample with those (the node's text shows them "
    "after a run). Save Motion writes such files from any Action Prism Encode."
)


def masked_half() -> list[dict]:
    """A 64x64 MASK that is 1 on the left half and 0 on the right, from core mask nodes: a solid 0,
    and a solid 1 of half the width added onto it at x = 0."""
    return [
        node("blank", "SolidMask", "Mask — everywhere 0", {"value": 0.0, "width": 64, "height": 64}),
        node("half", "SolidMask", "Mask — left half, 1", {"value": 1.0, "width": 32, "height": 64}),
        node("mask", "MaskComposite", "Mask — motion on the left half", {"x": 0, "y": 0, "operation": "add"},
             {"destination": ("blank", "MASK"), "source": ("half", "MASK")}),
    ]


def retrieval() -> list[dict]:
    """A multiline String node feeds the prompt to both CLIP Text Encode and Find Reference Video."""
    return [
        node("text", "PrimitiveStringMultiline", "Prompt text", {"value": RETRIEVAL_PROMPT}),
        node("prompt", "CLIPTextEncode", "Prompt", inputs={"clip": ("ckpt", "CLIP"), "text": ("text", "STRING")}),
        encode("negative", "Negative prompt", ""),
        node("find", "EchoReel_FindReferenceVideo", None, {
            "library": f"input/{EXAMPLE_LIBRARY}", "count": 1, "seed": 0, "frames": 16, "stride": 4, "width": 64,
            "height": 64, "resize": "squash (official)", "caption_filter": ""},
            {"text_encoder": ("ckpt", "CLIP"), "prompt": ("text", "STRING")}),
        node("prism", "EchoReel_ActionPrismEncode", None, {"seed": 0, "posterior": "sample (official)"}, {
            "echoreel": ("echoreel", "echoreel"), "vae": ("ckpt", "VAE"), "reference": ("find", "frames"),
            "reference_caption": ("find", "reference_caption"), "positive": ("prompt", "CONDITIONING"),
            "negative": ("negative", "CONDITIONING")}),
    ]


# name (the file name is the template browser's title and description, and its cards show about 29
# characters of a title: a workflow that cannot run as shipped says so within them) -> nodes, and columns left
# to right of node keys top to bottom; ("key", "other") starts a node no higher than `other` (so a
# Save Video has room below it for the preview it shows after a run)
WORKFLOWS = {
    "EchoReel text to video": (
        [*toy_loaders(), reference("reference"), *prompts(), prism("prism"), apply(), *native_sampling(),
         save("save", "echoreel/text_to_video", "decode")],
        [["ckpt", "echoreel", "prompt", "negative"], ["reference", "caption"], ["prism", "apply", "fps"],
         ["latent", "sampler"], ["decode", "save"]],
    ),
    "EchoReel with and without": (
        [*toy_loaders(), reference("reference"), *prompts(), prism("prism"), apply(),
         sampler("with", "Sampler — with EchoReel"), sampler("without", "Sampler — without EchoReel", model=("ckpt", "MODEL")),
         save("save_with", "echoreel/with_echoreel", "with", "Save Video — with EchoReel"),
         save("save_without", "echoreel/without_echoreel", "without", "Save Video — without EchoReel")],
        [["ckpt", "echoreel", "prompt", "negative"], ["reference", "caption"], ["prism", "apply"], ["with", "without"],
         ["save_with", ("save_without", "without")]],
    ),
    "EchoReel two references": (
        [*toy_loaders(), reference("reference", "Reference video — first"),
         reference("reference2", "Reference video — second, half speed", stride=2),
         *prompts(caption=("caption", "Reference caption — first reference", "a blue square")),
         encode("caption2", "Reference caption — second reference", "a blue square"),
         prism("prism", "Prism Encode — first reference"),
         prism("prism2", "Prism Encode — second reference", ref="reference2", caption="caption2", add_to="prism"),
         apply("prism2"), sampler("sampler"), save("save", "echoreel/two_references", "sampler")],
        [["ckpt", "echoreel", "prompt", "negative"], ["reference", "caption"], ["reference2", "caption2"],
         ["prism", "prism2", "apply"], ["sampler", "save"]],
    ),
    "EchoReel saved motion": (
        [*toy_loaders(),
         node("motion", "EchoReel_LoadMotion", None, {"motion_name": TOY_MOTION}, {"echoreel": ("echoreel", "echoreel")},
              models=[toy_model_entry(TOY_MOTION_FILE)]),
         encode("prompt", "Prompt", "a red circle"), encode("negative", "Negative prompt", ""), apply("motion"),
         sampler("sampler"), save("save", "echoreel/saved_motion", "sampler"),
         node("note", "Note", "A motion file instead of a reference video", {"": SAVED_MOTION_NOTE}, size=(420, 290))],
        [["note", "ckpt", "echoreel"], ["motion", "prompt", "negative"], ["apply", "sampler"], ["save"]],
    ),
    "EchoReel two motions blended": (
        [*toy_loaders(), reference("reference", "Reference video — first"),
         reference("reference2", "Reference video — second, half speed", stride=2), *prompts(),
         prism("prism", "Prism Encode — first motion"), prism("prism2", "Prism Encode — second motion", ref="reference2"),
         node("blend", "EchoReel_BlendMotion", None, {"weight_a": 0.5, "weight_b": 0.5},
              {"motion_a": ("prism", "action_features"), "motion_b": ("prism2", "action_features")}),
         apply("blend"), sampler("sampler"), save("save", "echoreel/two_motions_blended", "sampler")],
        [["ckpt", "echoreel", "prompt", "negative", "caption"], ["reference"], ["reference2"], ["prism", "prism2", "blend"],
         ["apply", "sampler", "save"]],
    ),
    "EchoReel masked motion": (
        [*toy_loaders(), reference("reference"), *prompts(), prism("prism"), *masked_half(), apply(mask="mask"),
         *native_sampling(), save("save", "echoreel/masked_motion", "decode")],
        [["ckpt", "echoreel", "prompt", "negative"], ["reference", "caption"], ["blank", "half", "mask"],
         ["prism", "apply", "fps"], ["latent", "sampler", "decode", "save"]],
    ),
    "EchoReel long video": (
        [*toy_loaders(), reference("reference"), *prompts(), prism("prism"), apply(), sampler("sampler", long=True),
         save("save", "echoreel/long_video", "sampler")],
        [["ckpt", "echoreel", "prompt", "negative"], ["reference", "caption"], ["prism", "apply"], ["sampler"], ["save"]],
    ),
    "EchoReel prompt only (search)": (
        [*toy_loaders(), *retrieval(), apply(), sampler("sampler"), save("save", "echoreel/prompt_only", "sampler"),
         node("note", "Note", "A reference found from the prompt", {"": RETRIEVAL_NOTE}, size=(420, 230))],
        [["note", "ckpt", "echoreel"], ["text", "prompt", "negative"], ["find"], ["prism", "apply"], ["sampler", "save"]],
    ),
    "EchoReel image to video": (
        [*toy_loaders(TOY_I2V_MODEL_FILE, TOY_I2V_ECHOREEL_FILE), reference("reference"), *prompts(), prism("prism"),
         apply(), node("image", "LoadImage", "First frame", {"image": pathlib.PurePosixPath(TOY_FIRST_FRAME_FILE).name}),
         sampler("sampler", image=("image", "IMAGE")), save("save", "echoreel/image_to_video", "sampler")],
        [["ckpt", "echoreel", "prompt", "negative"], ["reference", "caption"], ["image", "prism", "apply"],
         ["sampler", "save"]],
    ),
}

# The graph is built from the node definitions, saved, and opened again as a user opens a file
# (app.loadGraphData), since only then do upload widgets show their previews, which set the
# heights. Sizes are read once nothing has changed for a second.
COMMON_JS = r"""
async function steady() {
  let last = "", still = 0;
  for (let i = 0; i < 80 && still < 4; i++) {
    const now = JSON.stringify(app.graph.nodes.map(n => [n.size, n.computeSize()]));
    still = now === last ? still + 1 : 0;
    last = now;
    app.graph.setDirtyCanvas(true, true);
    await new Promise(r => setTimeout(r, 250));
  }
}
function saved() {
  const workflow = app.graph.serialize();
  delete workflow.extra.ds;  // no saved view: the page fits the whole graph to the window on opening
  return JSON.stringify(workflow);  // as the page writes files: undefined fields left out, key order kept
}
// what each node needs: its computeSize, and wide enough that no title, widget label or value is
// cut short (the frontend's drawTruncatingText: margins 15, paddings 5 and 20, gap 5). A video
// preview asks computeSize for its node's own width plus 104, whatever the width (its minWidth is
// the node's width): for such a node only the texts set the width.
function needs() {
  const ctx = document.createElement("canvas").getContext("2d");
  const out = {};
  for (const node of app.graph.nodes) {
    const size = Array.from(node.computeSize());
    const previews = (node.widgets || []).some(w => w.computeLayoutSize && w.computeLayoutSize(node).minWidth >= node.size[0]);
    let width = previews ? 0 : size[0];
    ctx.font = node.titleFontStyle;
    width = Math.max(width, ctx.measureText(node.title).width + 2 * LiteGraph.NODE_TITLE_HEIGHT + 4);
    ctx.font = node.innerFontStyle;
    for (const w of node.widgets || []) {
      if (!["combo", "number", "text", "toggle"].includes(w.type) || (w.options && w.options.multiline)) continue;
      width = Math.max(width, ctx.measureText(w.label || w.name).width + 5 + ctx.measureText(String(w.value)).width + 4 * 15 + 5 + 20);
    }
    out[node.id] = [Math.ceil(width), Math.max(size[1], node.size[1])];
  }
  return out;
}
"""

BUILD_JS = COMMON_JS + r"""
const spec = args[0];
app.clean();
app.graph.clear();
const made = {};
for (const n of spec.nodes) {
  const node = LiteGraph.createNode(n.type);
  if (!node) throw new Error(`no node type ${n.type}`);
  if (n.title) node.title = n.title;
  app.graph.add(node);
  const all = node.widgets.flatMap(w => [w, ...(w.linkedWidgets || [])]);  // a seed's control widget is linked
  for (const [name, value] of Object.entries(n.widgets)) {
    const widget = name === "" ? node.widgets[0] : all.find(w => w.name === name);
    if (!widget) throw new Error(`${n.type}: no widget ${name} in ${all.map(w => w.name)}`);
    widget.value = value;
  }
  if (n.models) node.properties.models = n.models;
  made[n.key] = node;
}
for (const n of spec.nodes) {
  for (const [input, [source, output]] of Object.entries(n.inputs)) {
    const target = made[n.key], origin = made[source];
    const out = origin.outputs.findIndex(o => o.name === output);
    const slot = target.inputs.findIndex(i => i.name === input);
    if (out < 0 || slot < 0) throw new Error(`${source}.${output} -> ${n.key}.${input}: no such slot`);
    origin.connect(out, target, slot);
  }
}
return {workflow: saved(), ids: Object.fromEntries(Object.entries(made).map(([k, v]) => [k, v.id])),
        title: LiteGraph.NODE_TITLE_HEIGHT};
"""

# open a saved graph (optionally with new positions and sizes first) and report what each node needs
OPEN_JS = COMMON_JS + r"""
const [workflow, places] = args;
for (const node of workflow.nodes) {
  if (places && places[node.id]) {
    const [x, y, w, h] = places[node.id];
    node.pos = [x, y];
    node.size = [w, h];
  }
}
await app.loadGraphData(workflow, true, false, "layout");
await steady();
return {needs: needs(), sizes: Object.fromEntries(app.graph.nodes.map(n => [n.id, Array.from(n.size)]))};
"""

# set the widths, and read the heights the nodes then need
WIDTHS_JS = COMMON_JS + r"""
const [widths] = args;
for (const [id, width] of Object.entries(widths)) app.graph.getNodeById(Number(id)).setSize([width, 10]);
await steady();
return needs();
"""

SAVE_JS = COMMON_JS + r"""
const prompt = await app.graphToPrompt();
return {workflow: saved(), api: JSON.stringify(prompt.output)};
"""


def column_widths(columns: list[list[str]], needs: dict) -> dict:
    """Each node as wide as its column: the widest need in it, at least MIN_WIDTH."""
    widths = {}
    for column in columns:
        keys = [entry[0] if isinstance(entry, tuple) else entry for entry in column]
        width = max([MIN_WIDTH] + [needs[key][0] + 1 for key in keys])
        widths.update((key, width) for key in keys)
    return widths


def layout(columns: list[list[str]], sizes: dict, title_height: int) -> dict:
    """Columns left to right, nodes top to bottom, `GAP_X` and `GAP_Y` apart; `pos` is the body's
    top-left, the title bar sits above it."""
    places, x = {}, 0
    for column in columns:
        column = [entry if isinstance(entry, tuple) else (entry, None) for entry in column]
        width = sizes[column[0][0]][0]
        y = 0
        for key, below in column:
            if below:
                y = max(y, places[below][1] - title_height)
            height = sizes[key][1]
            places[key] = [x, y + title_height, width, height]
            y += title_height + height + GAP_Y
        x += width + GAP_X
    return places


def lay_out(browser, nodes: list[dict], columns: list) -> tuple[dict, dict]:
    """Build, open, size and place one graph; reopen it until opening changes nothing."""
    keys = [entry[0] if isinstance(entry, tuple) else entry for column in columns for entry in column]
    assert sorted(keys) == sorted(n["key"] for n in nodes), "every node in exactly one column"
    built = browser.js_async(BUILD_JS, {"nodes": nodes})
    ids, title = built["ids"], built["title"]
    workflow = json.loads(built["workflow"])
    by_key = lambda table: {k: table[str(ids[k])] for k in ids}  # noqa: E731
    opened = browser.js_async(OPEN_JS, workflow, None)
    least = {n["key"]: n["size"] or (0, 0) for n in nodes}
    needs = {k: [max(w, least[k][0]), h] for k, (w, h) in by_key(opened["needs"]).items()}
    widths = column_widths(columns, needs)
    heights = by_key(browser.js_async(WIDTHS_JS, {str(ids[k]): w for k, w in widths.items()}))
    sizes = {k: [widths[k], max(round(heights[k][1]) + 1, least[k][1])] for k in ids}
    for attempt in range(4):
        places = layout(columns, sizes, title)
        opened = browser.js_async(OPEN_JS, workflow, {str(ids[k]): v for k, v in places.items()})
        grown = {k: size for k, size in by_key(opened["sizes"]).items() if size[1] > sizes[k][1] + 0.5}
        if not grown:
            result = browser.js_async(SAVE_JS)
            return json.loads(result["workflow"]), json.loads(result["api"])
        for k, size in grown.items():
            sizes[k][1] = round(size[1]) + 1
    raise RuntimeError(f"nodes keep growing on opening: {grown}")


def build_layouts(names: list[str]) -> None:
    from browser import Browser

    base = pathlib.Path(tempfile.mkdtemp(prefix="echoreel-layout-"))
    server = serve(base)
    try:
        server.post("/settings/Comfy.TutorialCompleted", True)
        browser = Browser(server.url)
        try:
            for name in names:
                workflow, api = lay_out(browser, *WORKFLOWS[name])
                api = dict(sorted(api.items(), key=lambda item: int(item[0])))
                (EXAMPLES / f"{name}.json").write_text(json.dumps(workflow, indent=1, ensure_ascii=False) + "\n")
                (API_EXAMPLES / f"{name}.json").write_text(json.dumps(api, indent=1, ensure_ascii=False) + "\n")
                print(f"wrote {name}.json: {len(workflow['nodes'])} nodes, {len(api)} in the API copy")
        finally:
            browser.quit()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


THUMB_WIDTH = 256


def frame_grid(videos: list, rows_each: int, columns: int = 4):
    """Frames spread evenly over each video, `columns` a row, `rows_each` rows a video, scaled to
    THUMB_WIDTH wide; a 2 px white line between videos."""
    import numpy as np
    from PIL import Image

    blocks = []
    for video in videos:
        frames = video.frames
        picks = np.linspace(0, len(frames) - 1, rows_each * columns).round().astype(int)
        rows = [np.concatenate([frames[i] for i in picks[r * columns:(r + 1) * columns]], axis=1) for r in range(rows_each)]
        blocks.append(np.concatenate(rows, axis=0))
    line = np.full((2, blocks[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([part for block in blocks for part in (block, line)][:-1], axis=0)
    picture = Image.fromarray(grid)
    return picture.resize((THUMB_WIDTH, round(picture.height * THUMB_WIDTH / picture.width)), Image.LANCZOS)


def make_thumbnails(names: list[str]) -> None:
    from comfyui_server import load

    base = pathlib.Path(tempfile.mkdtemp(prefix="echoreel-thumbnails-"))
    server = serve(base)
    try:
        for name in names:
            target = EXAMPLES / f"{name}.jpg"
            prompt = load(API_EXAMPLES / f"{name}.json")
            started = time.time()
            entry = server.run(prompt)
            saves = [k for k, v in prompt.items() if v["class_type"] == "SaveVideo"]
            videos = [server.video(entry, k) for k in sorted(saves, key=int)]
            picture = frame_grid(videos, rows_each=4 // len(videos))
            buffer = io.BytesIO()
            picture.save(buffer, "JPEG", quality=85, optimize=True)
            target.write_bytes(buffer.getvalue())
            print(f"wrote {target.name}: {picture.width}x{picture.height}, {len(buffer.getvalue())} bytes, "
                  f"from a run of {time.time() - started:.0f} s")
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["layout", "thumbnails"])
    parser.add_argument("--only", nargs="*", help="workflow names (default: all)")
    args = parser.parse_args()
    names = args.only or list(WORKFLOWS)
    API_EXAMPLES.mkdir(parents=True, exist_ok=True)
    (build_layouts if args.what == "layout" else make_thumbnails)(names)


if __name__ == "__main__":
    main()
