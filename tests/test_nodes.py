"""The node classes called directly, with a real ComfyUI importable and tiny weights on disk."""

from __future__ import annotations

import asyncio
import pathlib

import pytest
import torch

from comfyui_env import (
    I2V_ECHOREEL_FILE,
    I2V_FILE,
    LVDM_ECHOREEL_FILE,
    LVDM_FILE,
    import_pack_in_process,
    write_reference_video,
    write_tiny_weights,
)
from write_failures import file_size_limit


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    pack = import_pack_in_process()
    import folder_paths

    base = tmp_path_factory.mktemp("comfyui")
    write_tiny_weights(base / "models")
    for kind in ("videocrafter", "echoreel"):
        folder_paths.add_model_folder_path(kind, str(base / "models" / kind))
    (base / "input").mkdir()
    folder_paths.set_input_directory(str(base / "input"))
    write_reference_video(base / "input" / "reference.mp4")
    (base / "input" / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    asyncio.run(pack.comfy_entrypoint())  # registers the model folders, as ComfyUI's loader does
    return {cls.define_schema().node_id: cls for cls in pack.nodes.NODES}


def video_options(node) -> list[str]:
    """The files the Load Reference Video's upload combo lists."""
    return next(i for i in node.define_schema().inputs if i.id == "video").options


def load_reference(nodes, video, frames, stride, start, width, height, resize):
    """Load Reference Video by input name, as ComfyUI calls it."""
    return nodes["EchoReel_LoadReferenceVideo"].execute(frames=frames, stride=stride, start=start, width=width,
                                                        height=height, resize=resize, video=video)


def encode(nodes, clip, text):
    """ComfyUI's own CLIP Text Encode on the loader's CLIP."""
    import nodes as comfy_nodes

    return comfy_nodes.CLIPTextEncode().encode(clip, text)[0]


WAVE1_NODES = {  # id -> (inputs in widget order, outputs): what saved workflows hold, never to change
    # the loader's and Apply's outputs became native MODEL/CLIP/VAE in wave 2: same slots, ComfyUI's names
    "EchoReel_LoadVideoCrafterCheckpoint": (["ckpt_name", "dtype"], ["MODEL", "CLIP", "VAE"]),
    "EchoReel_LoadEchoReel": (["echoreel_name"], ["echoreel"]),
    "EchoReel_LoadReferenceVideo": (["frames", "stride", "start", "width", "height", "resize", "video"],
                                    ["frames", "frame_count", "fps"]),
    "EchoReel_TextEncode": (["text_encoder", "text"], ["CONDITIONING"]),
    "EchoReel_ActionPrismEncode": (["echoreel", "vae", "reference", "reference_caption", "positive", "negative", "seed",
                                    "posterior", "add_to"], ["action_features"]),
    "EchoReel_ApplyEchoReel": (["model", "echoreel", "action_features", "strength", "start_percent", "end_percent"],
                               ["MODEL"]),
    "EchoReel_VideoCrafterSampler": (["model", "positive", "negative", "vae", "width", "height", "frames", "fps", "steps",
                                      "cfg", "eta", "seed", "image"], ["frames", "latent"]),
    "EchoReel_LongVideoSampler": (["model", "positive", "negative", "vae", "width", "height", "frames", "fps", "steps",
                                   "cfg", "eta", "seed", "clips", "overlap", "alpha", "beta", "drop_overlap", "image"],
                                  ["frames", "latent"]),
}


def test_v3_nodes_keep_every_wave1_id_input_and_output_in_order(nodes):
    """Saved workflows hold node ids, input names in widget order and outputs by slot: new inputs
    and outputs may only come after the old ones."""
    assert set(WAVE1_NODES) <= set(nodes)  # later nodes may join
    for node_id, (inputs, outputs) in WAVE1_NODES.items():
        info = nodes[node_id].GET_NODE_INFO_V1()
        order = info["input_order"]["required"] + info["input_order"].get("optional", [])
        assert [name for name in order if name in inputs] == inputs, node_id
        assert order[:len(inputs)] == inputs, node_id  # anything new comes after
        assert list(info["output_name"][:len(outputs)]) == outputs, node_id


def test_every_node_has_tooltips_a_description_and_a_help_page(nodes):
    from comfyui_env import ROOT

    for node_id, cls in nodes.items():
        schema = cls.define_schema()
        assert schema.description and schema.category.startswith("EchoReel"), node_id
        for item in schema.inputs + schema.outputs:
            assert item.tooltip, f"{node_id}.{item.id} has no tooltip"
        page = ROOT / "web" / "docs" / f"{node_id}.md"
        assert page.is_file() and page.read_text().startswith(f"# {schema.display_name}\n"), page


def test_comfyui_checks_every_input_but_the_file_names(nodes):
    """validate_inputs names only the file input, so ComfyUI's own type, range and option checks
    run on every other input (a `**kwargs` there would switch them off)."""
    import inspect

    for node_id, cls in nodes.items():
        validate = cls.__dict__.get("validate_inputs")
        if validate is not None:
            spec = inspect.getfullargspec(validate.__func__)
            assert spec.varkw is None and len(spec.args) == 2, node_id  # (cls, the file input)


def test_text_to_video_with_echoreel_through_the_nodes(nodes):
    model, text_encoder, vae = nodes["EchoReel_LoadVideoCrafterCheckpoint"].execute(LVDM_FILE, "auto")
    assert model.model.preset.family == "lvdm" and not model.model_options["transformer_options"].get("patches")
    positive, negative = encode(nodes, text_encoder, "a red circle"), encode(nodes, text_encoder, "")
    caption = encode(nodes, text_encoder, "a red square moving right")
    assert positive[0][0].shape == (1, 77, 64)
    (echoreel,) = nodes["EchoReel_LoadEchoReel"].execute(LVDM_ECHOREEL_FILE)
    frames, count, fps = load_reference(nodes, "reference.mp4", 4, 4, 0, 32, 32, "squash (official)")
    assert frames.shape == (4, 32, 32, 3) and count == 4 and fps == pytest.approx(8.0)
    (features,) = nodes["EchoReel_ActionPrismEncode"].execute(echoreel, vae, frames, caption, positive, negative, 0, "sample (official)")
    (applied,) = nodes["EchoReel_ApplyEchoReel"].execute(model, echoreel, features, 1.0, 0.0, 1.0)
    assert not model.model_options["transformer_options"].get("patches")  # the input model is untouched
    assert applied is not model and applied.model is model.model  # a clone sharing the UNet

    sampler = nodes["EchoReel_VideoCrafterSampler"]
    args = (positive, negative, vae, 32, 32, 4, 8, 3, 7.5, 1.0, 5)
    images, latent, video = sampler.execute(applied, *args)
    again, _, _ = sampler.execute(applied, *args)
    base, _, _ = sampler.execute(model, *args)
    assert images.shape == (4, 32, 32, 3) and latent["samples"].shape == (1, 4, 4, 16, 16)
    assert torch.isfinite(images).all() and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, again)
    assert (images - base).abs().max() > 1e-4  # EchoReel changed the video
    # nothing stays attached: the base model still gives its own output
    assert torch.equal(sampler.execute(model, *args)[0], base)
    # the LATENT decodes with VideoCrafter Decode to the same frames
    decoded, _ = nodes["EchoReel_DecodeVideo"].execute(vae, latent, 8.0)
    assert torch.equal(decoded, images)


def test_two_references_chain(nodes):
    model, text_encoder, vae = nodes["EchoReel_LoadVideoCrafterCheckpoint"].execute(LVDM_FILE, "fp32")
    positive, negative = encode(nodes, text_encoder, "a dog"), encode(nodes, text_encoder, "")
    (echoreel,) = nodes["EchoReel_LoadEchoReel"].execute(LVDM_ECHOREEL_FILE)
    frames, _, _ = load_reference(nodes, "reference.mp4", 4, 2, 0, 32, 32, "crop")
    prism = nodes["EchoReel_ActionPrismEncode"]
    (first,) = prism.execute(echoreel, vae, frames, positive, positive, negative, 0, "mean")
    (both,) = prism.execute(echoreel, vae, frames.flip(0), negative, positive, negative, 0, "mean", add_to=first)
    assert both.cond.shape[1] == 2 * first.cond.shape[1] and torch.equal(both.cond[:, :4], first.cond)


def test_image_to_video(nodes):
    model, text_encoder, vae = nodes["EchoReel_LoadVideoCrafterCheckpoint"].execute(I2V_FILE, "auto")
    assert model.model.preset.is_i2v
    positive, negative = encode(nodes, text_encoder, "a cat"), encode(nodes, text_encoder, "")
    sampler = nodes["EchoReel_VideoCrafterSampler"]
    image = torch.rand(1, 40, 56, 3)
    images, _, _ = sampler.execute(model, positive, negative, vae, 32, 32, 4, 8, 2, 7.5, 1.0, 1, image=image)
    assert images.shape == (4, 32, 32, 3)
    with pytest.raises(ValueError, match="image-to-video model: connect an image"):
        sampler.execute(model, positive, negative, vae, 32, 32, 4, 8, 2, 7.5, 1.0, 1)
    # natively: Image Conditioning, then KSampler on an empty video latent, then VideoCrafter Decode
    import nodes as comfy_nodes

    cond, uncond = nodes["EchoReel_ImageConditioning"].execute(model, positive, negative, image, 32, 32).args
    assert cond[0][1]["image_context"].shape[0] == 1 and not torch.equal(cond[0][1]["image_context"],
                                                                          uncond[0][1]["image_context"])
    (latent,) = nodes["EchoReel_EmptyVideoLatent"].execute(vae, 32, 32, 4, 1).args
    with torch.no_grad():
        (sampled,) = comfy_nodes.KSampler().sample(model, 1, 2, 7.5, "euler", "normal", cond, uncond, latent)
        with pytest.raises(ValueError, match="put every prompt .* through VideoCrafter Image Conditioning"):
            comfy_nodes.KSampler().sample(model, 1, 2, 7.5, "euler", "normal", positive, negative, latent)
    frames, video = nodes["EchoReel_DecodeVideo"].execute(vae, sampled, 8.0).args
    assert frames.shape == (4, 32, 32, 3) and video.get_components().images.shape == (4, 32, 32, 3)


def test_bad_inputs_give_clear_errors(nodes):
    with pytest.raises(FileNotFoundError, match="absent.safetensors: not found in models/videocrafter"):
        nodes["EchoReel_LoadVideoCrafterCheckpoint"].execute("absent.safetensors", "auto")
    from comfyui_echoreel_pack.echoreel_core.video_io import VideoReadError

    with pytest.raises(VideoReadError, match="broken.mp4"):
        load_reference(nodes, "broken.mp4", 4, 4, 0, 32, 32, "crop")
    model, text_encoder, vae = nodes["EchoReel_LoadVideoCrafterCheckpoint"].execute(LVDM_FILE, "auto")
    (i2v_echoreel,) = nodes["EchoReel_LoadEchoReel"].execute(I2V_ECHOREEL_FILE)
    positive = encode(nodes, text_encoder, "x")
    frames, _, _ = load_reference(nodes, "reference.mp4", 4, 4, 0, 32, 32, "crop")
    (lvdm_echoreel,) = nodes["EchoReel_LoadEchoReel"].execute(LVDM_ECHOREEL_FILE)
    (features,) = nodes["EchoReel_ActionPrismEncode"].execute(lvdm_echoreel, vae, frames, positive, positive, positive, 0, "mean")
    with pytest.raises(ValueError, match="these EchoReel weights are for videocrafter.*the model is lvdm"):
        nodes["EchoReel_ApplyEchoReel"].execute(model, i2v_echoreel, features, 1.0, 0.0, 1.0)
    small, _, _ = load_reference(nodes, "reference.mp4", 4, 4, 0, 16, 16, "crop")
    with pytest.raises(ValueError, match="need 32x32"):
        nodes["EchoReel_ActionPrismEncode"].execute(lvdm_echoreel, vae, small, positive, positive, positive, 0, "mean")


def test_file_names_stay_inside_comfyui_folders(nodes, tmp_path, monkeypatch):
    """A workflow, which anyone who reaches the server can send, names the files: a name leading
    out of ComfyUI's folders is refused by VALIDATE_INPUTS, IS_CHANGED and the load alike, before
    anything outside is read; ComfyUI's ` [output]` annotation keeps working."""
    import folder_paths

    from comfyui_echoreel_pack.nodes import runtime

    inputs = folder_paths.get_input_directory()
    outside = write_reference_video(pathlib.Path(inputs).parent / "outside.mp4")
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path))
    write_reference_video(tmp_path / "made.mp4")
    video = nodes["EchoReel_LoadReferenceVideo"]
    for name, folder in (("../outside.mp4", inputs), (str(outside), inputs), ("sub/../../outside.mp4", inputs),
                         ("../outside.mp4 [output]", tmp_path)):
        given = name.removesuffix(" [output]")
        message = f'refused "{given}": files must be inside {folder}'
        assert video.validate_inputs(video=name) == message
        for call in (lambda: video.fingerprint_inputs(video=name), lambda: load_reference(nodes, name, 4, 4, 0, 32, 32, "crop")):
            with pytest.raises(ValueError) as caught:
                call()
            assert str(caught.value) == message
    assert video.validate_inputs(video="made.mp4 [output]") is True
    assert load_reference(nodes, "made.mp4 [output]", 4, 4, 0, 32, 32, "crop")[0].shape == (4, 32, 32, 3)

    checkpoint, echoreel = nodes["EchoReel_LoadVideoCrafterCheckpoint"], nodes["EchoReel_LoadEchoReel"]
    for name in ("../../etc/passwd", "/etc/passwd", runtime.model_path("videocrafter", LVDM_FILE)):
        message = f'refused "{name}": files must be inside models/videocrafter or models/checkpoints'
        assert checkpoint.validate_inputs(ckpt_name=name) == message
        with pytest.raises(ValueError) as caught:
            checkpoint.execute(name, "auto")
        assert str(caught.value) == message
        assert echoreel.validate_inputs(echoreel_name=name) == f'refused "{name}": files must be inside models/echoreel'


def test_the_example_video_is_copied_whole_or_not_at_all(nodes, tmp_path, monkeypatch, caplog):
    """The node copies the shipped toy reference (and the image-to-video toy's first frame) into
    the input folder; a copy that cannot be written is a warning (the node list still loads), never
    half a file that would then stay."""
    import folder_paths

    from comfyui_echoreel_pack.echoreel_core.toy.models import SHIPPED_DIR, TOY_FIRST_FRAME_FILE, TOY_REFERENCE_FILE

    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path))
    name, first = pathlib.Path(TOY_REFERENCE_FILE).name, pathlib.Path(TOY_FIRST_FRAME_FILE).name
    assert (SHIPPED_DIR / TOY_FIRST_FRAME_FILE).stat().st_size < 1024 < (SHIPPED_DIR / TOY_REFERENCE_FILE).stat().st_size
    video = nodes["EchoReel_LoadReferenceVideo"]
    with file_size_limit(1024):  # the video does not fit, the first frame does
        assert video_options(video) == []
    assert f"cannot write {tmp_path / name}: File too large" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == [first]
    assert video_options(video) == [name]
    for shipped in (TOY_REFERENCE_FILE, TOY_FIRST_FRAME_FILE):
        assert (tmp_path / pathlib.Path(shipped).name).read_bytes() == (SHIPPED_DIR / shipped).read_bytes()


def test_long_video_sampler_chains_clips(nodes):
    model, text_encoder, vae = nodes["EchoReel_LoadVideoCrafterCheckpoint"].execute(LVDM_FILE, "auto")
    positive, negative = encode(nodes, text_encoder, "a red circle"), encode(nodes, text_encoder, "")
    long_sampler = nodes["EchoReel_LongVideoSampler"]
    common = (positive, negative, vae, 32, 32, 4, 8, 3, 7.5, 1.0, 5)
    images, latent, video = long_sampler.execute(model, *common, 3, 2, 4.0, 0.4, False)
    assert images.shape == (12, 32, 32, 3) and latent["samples"].shape == (1, 4, 12, 16, 16)
    components = video.get_components()  # the native VIDEO plays the same frames at the sampler's fps
    assert torch.equal(components.images, images) and components.frame_rate == 8
    dropped, _, _ = long_sampler.execute(model, *common, 3, 2, 4.0, 0.4, True)
    assert dropped.shape == (3 * 4 - 2 * 2, 32, 32, 3)
    one_clip, _, _ = long_sampler.execute(model, *common, 1, 2, 4.0, 0.4, False)
    single, _, _ = nodes["EchoReel_VideoCrafterSampler"].execute(model, *common)
    # one clip is the ordinary sampler: the core's DDIM loop there, the official DDIM inside ComfyUI's
    # sampling here (CFG on x0 and eps recovered from it: float rounding only)
    assert (one_clip - single).abs().max() < 1e-4


def test_reference_from_a_native_video(nodes):
    """A VIDEO from core Load Video (a file) reads exactly as the file itself; one made in memory
    (frames and a rate) gets the same official selection, the last frame repeated past the end."""
    import folder_paths
    from comfy_api.latest import InputImpl, Types

    node = nodes["EchoReel_LoadReferenceVideo"]
    settings = dict(frames=4, stride=4, start=0, width=32, height=32, resize="crop", video="broken.mp4")
    path = str(pathlib.Path(folder_paths.get_input_directory()) / "reference.mp4")
    from_file = node.execute(**settings, source_video=InputImpl.VideoFromFile(path))
    expected = load_reference(nodes, "reference.mp4", 4, 4, 0, 32, 32, "crop")
    assert torch.equal(from_file[0], expected[0]) and from_file[2] == expected[2]
    by_time = node.execute(**dict(settings, video="reference.mp4"), select="by time")  # a constant-rate file
    assert torch.equal(by_time[0], expected[0])
    frames = torch.rand(6, 32, 32, 3)
    in_memory = InputImpl.VideoFromComponents(Types.VideoComponents(images=frames, audio=None, frame_rate=12))
    pixels, count, fps = node.execute(**settings, source_video=in_memory)
    assert count == 4 and fps == 12.0
    assert torch.equal(pixels, frames[[0, 4, 5, 5]])  # 0, 4, then 8 and 12 are past the end


def test_the_upload_button_lists_every_container_the_node_lists(nodes):
    """web/js/reference_video_upload.js keeps its own copy of the extensions (the frontend has no
    way to read them from the schema): it must equal the node's."""
    import re

    from comfyui_env import ROOT

    from comfyui_echoreel_pack.nodes.video import VIDEO_EXTENSIONS

    script = (ROOT / "web" / "js" / "reference_video_upload.js").read_text()
    listed = re.search(r"const VIDEO_EXTENSIONS = \[(.*?)\];", script, re.S).group(1)
    assert tuple(re.findall(r'"(\.\w+)"', listed)) == VIDEO_EXTENSIONS


def validate(nodes, monkeypatch, prompt):
    """ComfyUI's own validation of a prompt (execution.validate_prompt, as POST /prompt runs it):
    {(node, input): details} of every error."""
    import execution
    import nodes as comfy_nodes

    for node_id, cls in nodes.items():
        monkeypatch.setitem(comfy_nodes.NODE_CLASS_MAPPINGS, node_id, cls)
    valid, _, _, node_errors = asyncio.run(execution.validate_prompt("test", prompt, None))
    errors = {(node, e["extra_info"]["input_name"]): f"{e['message']}: {e['details']}"
              for node, v in node_errors.items() for e in v["errors"]}
    assert valid == (not errors)
    return errors


def test_comfyui_refuses_bad_widget_values_naming_the_input(nodes, monkeypatch):
    """Out-of-range numbers, unknown options and a missing file are refused before any node runs,
    each error on its own input; the file check reports on the file input only. ComfyUI 0.3.75
    checks the options of V1 (list) combos only, so there the node refuses an unknown option when
    it runs, naming the input; 0.33 refuses it at validation."""
    good_reference = {"frames": 4, "stride": 4, "start": 0, "width": 32, "height": 32, "resize": "crop",
                      "video": "reference.mp4"}
    prompt = {
        "1": {"class_type": "EchoReel_LoadVideoCrafterCheckpoint", "inputs": {"ckpt_name": LVDM_FILE, "dtype": "fp64"}},
        "2": {"class_type": "EchoReel_TextEncode", "inputs": {"text_encoder": ["1", 1], "text": "a dog"}},
        "3": {"class_type": "EchoReel_VideoCrafterSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "vae": ["1", 2], "width": 32, "height": 32,
            "frames": 0, "fps": 8, "steps": 2, "cfg": 7.5, "eta": 1.0, "seed": 0}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        "5": {"class_type": "EchoReel_LoadReferenceVideo", "inputs": dict(good_reference, width=7, resize="stretch",
                                                                          video="absent.mp4")},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }
    errors = validate(nodes, monkeypatch, prompt)
    combos = {("1", "dtype"), ("5", "resize")}
    checks_v3_combos = bool(combos & set(errors))
    assert set(errors) == {("3", "frames"), ("5", "width"), ("5", "video")} | (combos if checks_v3_combos else set())
    assert "Value 0 smaller than min of 1" in errors[("3", "frames")]
    assert "Value 7 smaller than min of 8" in errors[("5", "width")]
    assert "absent.mp4: no such video in the input folder" in errors[("5", "video")]
    if checks_v3_combos:
        assert "fp64" in errors[("1", "dtype")] and "stretch" in errors[("5", "resize")]
    with pytest.raises(ValueError, match=r"dtype: 'fp64' is not one of 'auto', 'fp32', 'fp16', 'bf16', 'fp8_e4m3fn', 'fp8_e5m2'"):
        nodes["EchoReel_LoadVideoCrafterCheckpoint"].execute(LVDM_FILE, "fp64")
    with pytest.raises(ValueError, match=r"resize: 'stretch' is not one of 'squash \(official\)', 'crop'"):
        load_reference(nodes, "reference.mp4", 4, 4, 0, 32, 32, "stretch")
    fixed = dict(prompt, **{"1": {"class_type": "EchoReel_LoadVideoCrafterCheckpoint",
                                  "inputs": {"ckpt_name": LVDM_FILE, "dtype": "auto"}}})
    fixed["3"] = {**prompt["3"], "inputs": {**prompt["3"]["inputs"], "frames": 4}}
    fixed["5"] = {"class_type": "EchoReel_LoadReferenceVideo", "inputs": good_reference}
    assert validate(nodes, monkeypatch, fixed) == {}
