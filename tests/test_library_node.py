"""Find Reference Video, called as ComfyUI calls it (ComfyUI importable, the shipped toy model)."""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil

import pytest
import torch

from comfyui_env import ROOT, import_pack_in_process

from echoreel_core.library import TextEmbedder, update_index
from echoreel_core.models.text_encoders import OpenCLIPTextConfig, OpenCLIPTextEncoder
from echoreel_core.toy.library import write_library
from echoreel_core.toy.world import ACTIONS, World

NODE_ID = "EchoReel_FindReferenceVideo"
TOY_MODEL = "videocrafter2_toy.safetensors"
TOY_ECHOREEL = "echoreel_videocrafter2_toy.safetensors"
SQUASH = "squash (official)"


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    pack = import_pack_in_process()
    import folder_paths

    base = tmp_path_factory.mktemp("comfyui_library")
    (base / "input").mkdir()
    folder_paths.set_input_directory(str(base / "input"))
    world = World(height=32, width=32, frames=4, stride=1)  # short clips write fast
    write_library(base / "input" / "toylib", 2, seed=3, world=world)
    (base / "input" / "not_a_library").mkdir()
    twins = base / "input" / "twins"  # two clips with one caption: the seed chooses
    (twins / "v").mkdir(parents=True)
    for name in ("a", "b"):
        shutil.copy(base / "input" / "toylib" / "videos" / "pulse_000.mp4", twins / "v" / f"{name}.mp4")
    (twins / "captions.json").write_text(json.dumps([{"video": f"v/{n}.mp4", "caption": "a green triangle pulsing"}
                                                     for n in ("a", "b")]))
    folder_paths.add_model_folder_path("echoreel_library", str(base / "libraries"))
    write_library(base / "libraries" / "shared", 1, seed=4, world=world, actions=("zigzag", "grow"))
    asyncio.run(pack.comfy_entrypoint())
    nodes = {cls.define_schema().node_id: cls for cls in pack.nodes.NODES}
    model, text_encoder, vae = nodes["EchoReel_LoadVideoCrafterCheckpoint"].execute(TOY_MODEL, "auto")
    (echoreel,) = nodes["EchoReel_LoadEchoReel"].execute(TOY_ECHOREEL)
    return {"nodes": nodes, "base": base, "runtime": pack.nodes.runtime, "text_encoder": text_encoder, "vae": vae, "echoreel": echoreel,
            "encode": lambda text: nodes["EchoReel_TextEncode"].execute(text_encoder, text)[0]}  # = CLIP Text Encode


def find(comfy, library="input/toylib", prompt="a red circle zigzagging", count=1, seed=0, frames=4, stride=1,
         width=64, height=64, resize=SQUASH, **optional):
    return comfy["nodes"][NODE_ID].execute(comfy["text_encoder"], library, prompt, count, seed, frames, stride, width,
                                           height, resize, **optional)


def test_the_node_is_registered_with_tooltips_a_help_page_and_its_libraries(comfy):
    cls = comfy["nodes"][NODE_ID]
    schema = cls.define_schema()
    assert [i.id for i in schema.inputs] == ["text_encoder", "library", "prompt", "count", "seed", "frames", "stride",
                                             "width", "height", "resize", "caption_filter"]
    assert [o.display_name for o in schema.outputs] == ["frames", "frame_count", "fps", "caption", "reference_caption"]
    assert all(item.tooltip for item in schema.inputs + schema.outputs)
    page = ROOT / "web" / "docs" / f"{NODE_ID}.md"
    assert page.read_text().startswith(f"# {schema.display_name}\n")
    options = next(i for i in schema.inputs if i.id == "library").options
    # folders with captions, in the input folder and echoreel_library, and the example's toy library,
    # which listing the libraries wrote into the input folder
    assert options == ["input/toy_library", "input/toylib", "input/twins", "shared"]


def test_the_example_library_is_written_once_whole_and_never_costs_the_list(comfy, tmp_path, monkeypatch, caplog):
    import folder_paths

    runtime = comfy["runtime"]
    library = comfy["base"] / "input" / "toy_library"
    entries = json.loads((library / "captions.json").read_text())
    assert len(entries) == 2 * len(ACTIONS) == 40 and {e["action"] for e in entries} == set(ACTIONS)  # 2 of each
    assert all((library / e["video"]).is_file() for e in entries)
    assert not [p for p in (comfy["base"] / "input").iterdir() if p.name.startswith(".toy_library")]  # no partial left
    before = (library / "captions.json").stat().st_mtime_ns
    runtime.provide_example_library()  # present: left alone
    assert (library / "captions.json").stat().st_mtime_ns == before
    # a write that fails leaves nothing under the name, only a warning
    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(tmp_path))

    def broken(folder, per_action):
        (pathlib.Path(folder) / "videos").mkdir()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runtime, "write_library", broken)
    runtime.provide_example_library()
    assert list(tmp_path.iterdir()) == [] and "no example reference library" in caplog.text


def test_finds_the_prompts_action_and_shows_the_clip_and_its_score(comfy):
    output = find(comfy)
    frames, count, fps, caption, conditioning = output.args
    assert frames.shape == (4, 64, 64, 3) and count == 4 and fps == pytest.approx(8.0)
    assert caption.endswith("zigzagging") and len(conditioning) == 1
    assert conditioning[0][0].shape == (1, 77, 64)
    torch.testing.assert_close(conditioning[0][0], comfy["encode"](caption)[0][0])
    text = output.ui.as_dict()["text"][0]
    assert text.startswith("1. videos/zigzag_") and "score" in text and "lexical" in text and caption in text
    assert (comfy["base"] / "input" / "toylib" / "echoreel_index.safetensors").is_file()
    # ComfyUI reruns the node when the library changes, not otherwise
    cls = comfy["nodes"][NODE_ID]
    before = cls.fingerprint_inputs("input/toylib")
    assert find(comfy).args[3] == caption and cls.fingerprint_inputs("input/toylib") == before
    # libraries from the echoreel_library folders, and the caption filter
    assert find(comfy, "shared", "a blue square growing").args[3].endswith("growing")
    assert "zigzag" not in find(comfy, prompt="a circle zigzagging", caption_filter="-zigzagging").args[3]
    # another seed picks another clip among equals
    picked = {find(comfy, "input/twins", "pulsing", seed=s).ui.as_dict()["text"][0].split()[1] for s in range(8)}
    assert picked == {"v/a.mp4", "v/b.mp4"}


def test_several_results_feed_the_multi_reference_path(comfy):
    frames, count, _, captions, conditioning = find(comfy, prompt="orbiting clockwise", count=2).args
    assert frames.shape == (8, 64, 64, 3) and count == 4 and len(conditioning) == 2
    assert len(captions.splitlines()) == 2 and all(c.endswith("orbiting clockwise") for c in captions.splitlines())
    prism = comfy["nodes"]["EchoReel_ActionPrismEncode"]
    positive, negative = comfy["encode"]("a red circle"), comfy["encode"]("")
    args = (comfy["echoreel"], comfy["vae"])
    (both,) = prism.execute(*args, frames, conditioning, positive, negative, 0, "mean")
    (first,) = prism.execute(*args, frames[:4], conditioning[:1], positive, negative, 0, "mean")
    (chained,) = prism.execute(*args, frames[4:], conditioning[1:], positive, negative, 0, "mean", add_to=first)
    assert both.cond.shape[1] == 8 and both.frames_per_reference == 4
    torch.testing.assert_close(both.cond, chained.cond)
    torch.testing.assert_close(both.uncond, chained.uncond)
    with pytest.raises(ValueError, match="do not split into 2 clips"):
        prism.execute(*args, frames[:7], conditioning, positive, negative, 0, "mean")


def test_refuses_folders_outside_comfyui_and_explains_empty_results(comfy):
    cls = comfy["nodes"][NODE_ID]
    for name in ("input/../..", "../secret", "/etc", "input/"):
        message = cls.validate_inputs(name)
        assert isinstance(message, str) and ("refused" in message or "library folder" in message), name
    assert "no such library folder" in cls.validate_inputs("input/missing")
    assert cls.validate_inputs("input/toylib") is True
    with pytest.raises(ValueError, match="the prompt is empty"):
        find(comfy, prompt="  ")
    with pytest.raises(ValueError, match="matches the caption filter"):
        find(comfy, caption_filter="cartwheel")


def test_an_index_from_another_text_encoder_is_refused(comfy):
    folder = comfy["base"] / "input" / "otherlib"
    write_library(folder, 1, seed=5, world=World(height=32, width=32, frames=2, stride=1), actions=("shrink",))
    torch.manual_seed(0)
    other = OpenCLIPTextEncoder(OpenCLIPTextConfig(width=64, heads=2, layers=2, embed_dim=64, skip_last_layers=0))
    update_index(folder, TextEmbedder(other, comfy["text_encoder"].echoreel_text_encoder.tokenizer))
    with pytest.raises(ValueError, match="another text encoder"):
        find(comfy, "input/otherlib", "a shrinking square")
