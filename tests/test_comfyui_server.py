"""End to end: a real ComfyUI server on 127.0.0.1 runs every example workflow: the text-to-video
ones on the shipped toy model (found with nothing downloaded), image-to-video on tiny weights. Prompts
are core CLIP Text Encode on the checkpoint's CLIP; text to video samples the MODEL with core KSampler
(fps conditioning, Empty Video Latent, VideoCrafter Decode), the others with the pack's samplers. The
VIDEO reaches core Save Video, whose mp4 is read back: frames, size and frame rate (the fps set in the
graph)."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import urllib.parse

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from comfyui_env import LVDM_ECHOREEL_FILE
from comfyui_server import API_EXAMPLES, EXAMPLES, PACK_DIR, api_copy, load, messages, serve, ui_examples

from echoreel_core.toy import metrics
from echoreel_core.toy.models import SHIPPED_DIR, TOY_FIRST_FRAME_FILE, TOY_PRESET

UI_EXAMPLES = ui_examples()
# the toy workflows run at their own size (64x64, 16 frames) with fewer steps, and an fps of their
# own, which the saved mp4 must carry (on the KSampler path: the fps conditioning and the decode's)
QUICK = {
    "EchoReel_VideoCrafterSampler": {"steps": 4, "seed": 5, "fps": 12},
    "EchoReel_LongVideoSampler": {"steps": 3, "seed": 5, "clips": 2, "fps": 12},
    "KSampler": {"steps": 4, "seed": 5},
    "EchoReel_VideoFps": {"fps": 12},
    "EchoReel_DecodeVideo": {"fps": 12},
}
PACK_SAMPLERS = ("EchoReel_VideoCrafterSampler", "EchoReel_LongVideoSampler")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfyui_server")
    (base / "input").mkdir()
    (base / "input" / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    started = serve(base)
    yield started
    started.stop()


def by_title(prompt: dict, title: str) -> str:
    (node_id,) = [k for k, v in prompt.items() if v.get("_meta", {}).get("title") == title]
    return node_id


def example(name: str) -> dict:
    return load(API_EXAMPLES / f"{name}.json")


def quick(prompt: dict, **overrides) -> dict:
    """The API workflow with fewer steps, plus per-class overrides {class_type: {input: value}}."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        node.pop("_meta", None)
        for changes in (QUICK, overrides):
            node["inputs"].update(changes.get(node["class_type"], {}))
    return prompt


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """What the frontend's 'Export (API)' does: links become [node, slot], widget values are matched
    to the widget inputs of /object_info in order (a seed's control widget and an upload button
    each add one saved value, the button's after all the node's widgets; a widget fed by a link,
    e.g. a prompt from a String node, keeps its value in the file, and the link is sent); a Note is
    the frontend's own and is left out."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] == "Note":
            continue
        info = object_info[node["type"]]["input"]
        inputs, values, uploads = {}, list(node["widgets_values"]), 0
        for name, spec in [(k, v) for group in ("required", "optional") for k, v in info.get(group, {}).items()]:
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            # V1 nodes list combos as ([...], {}); V3 nodes as ("COMBO", {"options": [...]})
            socket = next((i for i in node["inputs"] if i["name"] == name), None)
            linked = socket is not None and socket["link"] is not None
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                inputs[name] = values.pop(0)  # a widget keeps its saved value when a link feeds it
                if options.get("control_after_generate"):
                    assert values.pop(0) in ("fixed", "increment", "decrement", "randomize")
                uploads += bool(options.get("image_upload") or options.get("video_upload"))
            if linked:
                link = links[socket["link"]]
                inputs[name] = [str(link[1]), link[2]]
        del values[:uploads]  # the upload button's saved value comes after every input's widget
        assert not values, f"{node['type']}: {len(values)} widget values left over"
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def test_every_node_is_registered(server):
    info = server.get("/object_info")
    ours = {k: v for k, v in info.items() if k.startswith("EchoReel_")}
    assert {"EchoReel_LoadVideoCrafterCheckpoint", "EchoReel_LoadEchoReel", "EchoReel_LoadReferenceVideo", "EchoReel_TextEncode",
            "EchoReel_ActionPrismEncode", "EchoReel_ApplyEchoReel", "EchoReel_VideoCrafterSampler",
            "EchoReel_LongVideoSampler", "EchoReel_VideoFps", "EchoReel_ImageConditioning", "EchoReel_EmptyVideoLatent",
            "EchoReel_DecodeVideo", "EchoReel_OfficialDDIM"} <= set(ours)
    # the text-encode node stays registered for saved workflows, deprecated: no example uses it
    assert info["EchoReel_TextEncode"]["deprecated"]
    deprecated = {k for k, v in info.items() if v.get("deprecated")}
    for path in UI_EXAMPLES:
        used = {n["type"] for n in load(path)["nodes"]}
        assert not used & deprecated, (path.stem, used & deprecated)
        assert "CLIPTextEncode" in used, path.stem
    # the shipped toy model is listed and its reference video was put into the input folder
    assert "videocrafter2_toy.safetensors" in json.dumps(info["EchoReel_LoadVideoCrafterCheckpoint"]["input"]["required"]["ckpt_name"])
    assert (server.base / "input" / "toy_reference.mp4").is_file()
    # and the shipped toy motion file, which the saved-motion example loads
    assert "toy_orbit.safetensors" in info["EchoReel_LoadMotion"]["input"]["required"]["motion_name"][1]["options"]
    # and the retrieval example's toy library was written there, and is listed
    assert len(load(server.base / "input" / "toy_library" / "captions.json")) == 40  # 2 clips of each of 20 actions
    assert "input/toy_library" in info["EchoReel_FindReferenceVideo"]["input"]["required"]["library"][1]["options"]
    assert all(v["category"].startswith("EchoReel") and v["description"] for v in ours.values())


def test_examples_are_the_servers_workflow_templates(server):
    """example_workflows/ at its top level is what ComfyUI lists for the template browser (api/
    is not), each with a 256 px wide jpg next to it, served from the template route."""
    listed = server.get("/workflow_templates")[PACK_DIR]
    assert sorted(listed) == [path.stem for path in UI_EXAMPLES]
    assert sorted(p.name for p in API_EXAMPLES.glob("*.json")) == sorted(p.name for p in UI_EXAMPLES)
    for name in listed:
        picture = Image.open(io.BytesIO(server.get(f"/api/workflow_templates/{PACK_DIR}/{urllib.parse.quote(name)}.jpg")))
        assert (picture.format, picture.width) == ("JPEG", 256), name
        assert (EXAMPLES / f"{name}.jpg").stat().st_size < 40_000


@pytest.mark.parametrize("ui_path", UI_EXAMPLES, ids=lambda p: p.stem)
def test_ui_workflow_matches_object_info_and_converts_to_its_api_copy(server, ui_path):
    info = server.get("/object_info")
    workflow = load(ui_path)
    assert workflow["version"] == 0.4 and "ds" not in workflow["extra"]  # no saved view: the page fits the graph
    assert "echoreel_models" not in workflow["extra"]
    for node in workflow["nodes"]:
        assert node["type"] in info or node["type"] == "Note", node["type"]
    # the API copy is what the page sends: the same graph, plus the empty value of a preview widget
    expected = {}
    for node_id, node in load(api_copy(ui_path)).items():
        declared = {k for group in ("required", "optional") for k in info[node["class_type"]]["input"].get(group, {})}
        extra = set(node["inputs"]) - declared
        assert all(node["inputs"][k] == "" and k.endswith("-preview") for k in extra), extra
        expected[node_id] = {"class_type": node["class_type"], "inputs": {k: v for k, v in node["inputs"].items() if k in declared}}
    assert ui_to_api(workflow, info) == expected
    # every node with a twin in its workflow has a title of its own
    titles = [n.get("title") for n in workflow["nodes"]]
    for node in workflow["nodes"]:
        if sum(n["type"] == node["type"] for n in workflow["nodes"]) > 1:
            assert node.get("title") and titles.count(node["title"]) == 1, node["type"]


@pytest.mark.parametrize("ui_path", UI_EXAMPLES, ids=lambda p: p.stem)
def test_model_files_are_named_for_the_missing_models_dialog(server, ui_path):
    """Each loader's properties.models (the model loaders' and Load Motion's) names the file its
    widget holds, in a model folder the server knows, with the url the frontend's schema requires;
    the toy files' hashes are theirs."""
    folders = set(server.get("/models"))
    directories = {"EchoReel_LoadVideoCrafterCheckpoint": "videocrafter", "EchoReel_LoadEchoReel": "echoreel",
                   "EchoReel_LoadMotion": "echoreel_motion"}
    loaders = [n for n in load(ui_path)["nodes"] if n["type"] in directories]
    assert sum(n["type"] != "EchoReel_LoadMotion" for n in loaders) == 2
    for node in loaders:
        (entry,) = node["properties"]["models"]
        assert entry["name"] == node["widgets_values"][0] and entry["name"].endswith(".safetensors")
        assert entry["directory"] in folders and entry["directory"] == directories[node["type"]]
        assert entry["url"].startswith(("https://", "data:text/plain,"))
        # no download button that would fetch something else under this name
        assert not entry["url"].startswith(("https://huggingface.co/", "https://civitai.com/"))
        shipped = SHIPPED_DIR / entry["directory"] / entry["name"]
        if shipped.is_file():
            assert entry["hash_type"] == "SHA256" and entry["hash"] == hashlib.sha256(shipped.read_bytes()).hexdigest()


def video_settings(prompt: dict, save_id: str) -> tuple[int, int, int, int]:
    """(frames, height, width, fps) of the video a Save Video node gets: from a pack sampler's VIDEO
    output, or from VideoCrafter Decode after KSampler on an Empty Video Latent, whose fps
    conditioning must be the decode's fps."""
    source_id, slot = prompt[save_id]["inputs"]["video"]
    source = prompt[source_id]
    if source["class_type"] in PACK_SAMPLERS:
        assert slot == 2  # the sampler's VIDEO output, after frames and latent
        sampler = source["inputs"]
        return sampler["frames"] * sampler.get("clips", 1), sampler["height"], sampler["width"], sampler["fps"]
    assert (source["class_type"], slot) == ("EchoReel_DecodeVideo", 1)  # its VIDEO, after the frames
    ksampler = prompt[source["inputs"]["samples"][0]]
    assert ksampler["class_type"] == "KSampler"
    latent = prompt[ksampler["inputs"]["latent_image"][0]]
    assert latent["class_type"] == "EchoReel_EmptyVideoLatent" and latent["inputs"]["batch_size"] == 1
    fps = source["inputs"]["fps"]
    for branch in ("positive", "negative"):
        conditioning, _ = ksampler["inputs"][branch]
        assert prompt[conditioning]["class_type"] == "EchoReel_VideoFps" and prompt[conditioning]["inputs"]["fps"] == fps
    return latent["inputs"]["frames"], latent["inputs"]["height"], latent["inputs"]["width"], fps


@pytest.mark.parametrize("ui_path", UI_EXAMPLES, ids=lambda p: p.stem)
def test_api_workflow_runs_to_an_mp4_at_the_graphs_fps(server, ui_path):
    prompt = quick(load(api_copy(ui_path)))
    entry = server.run(prompt)
    saves = [k for k, v in prompt.items() if v["class_type"] == "SaveVideo"]
    assert saves
    for node_id in saves:
        video = server.video(entry, node_id)
        frames, height, width, fps = video_settings(prompt, node_id)
        assert video.frames.shape == (frames, height, width, 3)
        assert video.container_frames == frames and video.codec == "h264"
        assert video.fps == fps == 12  # the fps chosen in the graph travels with the video
        saved = entry["outputs"][node_id]["images"][0]
        assert (server.base / "output" / saved["subfolder"] / saved["filename"]).is_file()
        assert video.frames.std() > 0


def lossless(prompt: dict, sampler: str, probe: str) -> dict:
    """The prompt plus a lossless WEBP of the sampler's frames (IMAGE, output 0): exact frames,
    for comparisons that must be exact."""
    prompt = copy.deepcopy(prompt)
    prompt[probe] = {"class_type": "SaveAnimatedWEBP", "inputs": {
        "images": [sampler, 0], "filename_prefix": f"probe_{probe}", "fps": 8.0, "lossless": True, "quality": 100, "method": "default"}}
    return prompt


def webp_frames(server, entry: dict, node_id: str) -> np.ndarray:
    _, data = server.output_file(entry, node_id)
    with Image.open(io.BytesIO(data)) as webp:
        return np.stack([np.array(frame.convert("RGB")) for frame in ImageSequence.Iterator(webp)])


def test_interrupt_leaves_nothing_behind(server):
    """Cancel mid-sampling, queue again: the result equals an uninterrupted run, and the same
    (cached) model then samples exactly as a fresh one that never had EchoReel. Frames are compared
    losslessly: the mp4s of identical frames differed in runs on a loaded machine (up to 40/255
    after decoding), so an mp4 cannot tell equal frames apart from unequal ones."""
    base = example("EchoReel with and without")
    with_sampler, without_sampler = by_title(base, "Sampler — with EchoReel"), by_title(base, "Sampler — without EchoReel")
    save_with, save_without = by_title(base, "Save Video — with EchoReel"), by_title(base, "Save Video — without EchoReel")
    loaders = {by_title(base, t) for t in ("Load VideoCrafter Checkpoint", "Prompt", "Negative prompt")}
    slow = {"EchoReel_VideoCrafterSampler": {"steps": 8}}
    echo_only = lossless({k: v for k, v in quick(base, **slow).items() if k not in (without_sampler, save_without)},
                         with_sampler, "probe")
    interrupted = server.wait(server.queue_and_interrupt_while_sampling(echo_only, steps=8))
    assert interrupted["status"]["status_str"] == "error"
    assert "execution_interrupted" in messages(interrupted)

    again = webp_frames(server, server.run(echo_only), "probe")
    # the same graph on fresh objects (fp32 is auto's choice on a CPU, so only the cache key differs)
    fresh = quick(base, **slow, EchoReel_LoadVideoCrafterCheckpoint={"dtype": "fp32"})
    fresh_echo = lossless({k: v for k, v in fresh.items() if k not in (without_sampler, save_without)}, with_sampler, "probe")
    assert np.array_equal(again, webp_frames(server, server.run(fresh_echo), "probe"))

    # the model that was interrupted while EchoReel was attached, now without EchoReel...
    keep = loaders | {without_sampler, save_without}
    cached = lossless({k: v for k, v in quick(base, **slow).items() if k in keep}, without_sampler, "probe2")
    cached_model = webp_frames(server, server.run(cached), "probe2")
    # ...equals a model that never saw EchoReel
    never = lossless({k: v for k, v in fresh.items() if k in keep}, without_sampler, "probe3")
    never[save_without]["inputs"]["filename_prefix"] = "never"
    assert np.array_equal(cached_model, webp_frames(server, server.run(never), "probe3"))


def test_bad_inputs_fail_clearly_and_the_server_keeps_serving(server):
    base = example("EchoReel text to video")
    status, answer = server.post("/prompt", {"prompt": quick(base, EchoReel_LoadVideoCrafterCheckpoint={"ckpt_name": "absent.safetensors"})})
    assert status == 400 and "absent.safetensors: not found in models/videocrafter, models/checkpoints" in json.dumps(answer)

    broken = server.wait(server.queue(quick(base, EchoReel_LoadReferenceVideo={"video": "broken.mp4"})))
    assert broken["status"]["status_str"] == "error"
    assert "broken.mp4" in messages(broken) and "VideoReadError" in messages(broken)

    wrong = server.wait(server.queue(quick(base, EchoReel_LoadEchoReel={"echoreel_name": LVDM_ECHOREEL_FILE})))
    assert wrong["status"]["status_str"] == "error"
    # weights for another model are refused where they meet it, naming both (their 16x16 reference
    # latent is the toy's 64x64 frames through its f4 VAE, so the Prism encodes; Apply refuses)
    assert "EchoReel_ApplyEchoReel" in messages(wrong) and "these EchoReel weights are for lvdm (" in messages(wrong)
    assert f"the model is {TOY_PRESET.name}" in messages(wrong)

    # still serving: a good prompt runs
    good = server.run(quick(base, SaveVideo={"filename_prefix": "after_errors"}))
    assert server.video(good, by_title(base, "Save Video")).frames.shape == (16, 64, 64, 3)


def test_side_by_side_videos_differ(server):
    prompt = example("EchoReel with and without")
    entry = server.run(quick(prompt, EchoReel_VideoCrafterSampler={"seed": 7}))  # not the cached run above
    with_echoreel = server.video(entry, by_title(prompt, "Save Video — with EchoReel")).frames
    without = server.video(entry, by_title(prompt, "Save Video — without EchoReel")).frames
    assert np.abs(with_echoreel.astype(int) - without.astype(int)).max() > 0


def test_prompt_only_workflow_finds_a_clip_of_the_prompts_action(server):
    """The retrieval example: its one prompt finds a clip of that action in the pack's toy library
    (the node shows the clip and its score) and the video is made with it."""
    prompt = example("EchoReel prompt only (search)")
    (text,) = [v["inputs"]["value"] for v in prompt.values() if v["class_type"] == "PrimitiveStringMultiline"]
    assert text == "a red circle orbiting clockwise"
    (find,) = [k for k, v in prompt.items() if v["class_type"] == "EchoReel_FindReferenceVideo"]
    entry = server.run(quick(prompt, EchoReel_VideoCrafterSampler={"seed": 9}))
    (shown,) = entry["outputs"][find]["text"]
    assert shown.startswith("1. videos/orbit_cw_") and "score" in shown and shown.endswith("orbiting clockwise"), shown
    assert server.video(entry, by_title(prompt, "Save Video")).frames.shape == (16, 64, 64, 3)


def test_image_to_video_example_starts_from_its_first_frame(server):
    """The image-to-video example on the shipped toy I2V model: the video shows the first frame's
    object (a red circle) where the image has it, and it moves (the reference's orbit)."""
    prompt = example("EchoReel image to video")
    entry = server.run(quick(prompt, EchoReel_VideoCrafterSampler={"steps": 10, "seed": 11}))
    frames = torch.from_numpy(server.video(entry, by_title(prompt, "Save Video")).frames)  # (16, 64, 64, 3) uint8
    image = np.array(Image.open(SHIPPED_DIR / TOY_FIRST_FRAME_FILE).convert("RGB"))
    start = metrics.track(torch.from_numpy(image)[None])[0]
    track = metrics.track(frames)
    assert metrics.detection_rate(track) >= 0.9 and metrics.video_object(track)[0] == "red"
    assert math.dist((track[0].x, track[0].y), (start.x, start.y)) < 4  # pixels
    assert max(math.dist((d.x, d.y), (start.x, start.y)) for d in track if d) > 8  # it moved away
