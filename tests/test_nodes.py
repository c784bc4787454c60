"""The node classes called directly, with a real ComfyUI importable and tiny weights on disk."""

from __future__ import annotations

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
    return {node_id: cls() for node_id, cls in pack.nodes.NODE_CLASS_MAPPINGS.items()}


def encode(nodes, text_encoder, text):
    return nodes["EchoReel_TextEncode"].encode(text_encoder, text)[0]


def test_every_node_has_tooltips_and_a_description(nodes):
    for node in nodes.values():
        cls = type(node)
        assert cls.DESCRIPTION and cls.CATEGORY.startswith("EchoReel")
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
        spec = cls.INPUT_TYPES()
        for group in ("required", "optional"):
            for name, (_, options) in spec.get(group, {}).items():
                assert options.get("tooltip"), f"{cls.__name__}.{name} has no tooltip"


def test_text_to_video_with_echoreel_through_the_nodes(nodes):
    model, text_encoder, vae = nodes["EchoReel_LoadVideoCrafterCheckpoint"].load(LVDM_FILE, "auto")
    assert model.preset.family == "lvdm" and model.echoreel is None
    positive, negative = encode(nodes, text_encoder, "a red circle"), encode(nodes, text_encoder, "")
    caption = encode(nodes, text_encoder, "a red square moving right")
    assert positive[0][0].shape == (1, 77, 64)
    (echoreel,) = nodes["EchoReel_LoadEchoReel"].load(LVDM_ECHOREEL_FILE)
    frames, count, fps = nodes["EchoReel_LoadReferenceVideo"].load("reference.mp4", 4, 4, 0, 32, 32, "squash (official)")
    assert frames.shape == (4, 32, 32, 3) and count == 4 and fps == pytest.approx(8.0)
    (features,) = nodes["EchoReel_ActionPrismEncode"].encode(echoreel, vae, frames, caption, positive, negative, 0, "sample (official)")
    (applied,) = nodes["EchoReel_ApplyEchoReel"].apply(model, echoreel, features, 1.0, 0.0, 1.0)
    assert model.echoreel is None and applied.unet is not model.unet  # the input model is untouched

    sampler = nodes["EchoReel_VideoCrafterSampler"]
    args = (positive, negative, vae, 32, 32, 4, 8, 3, 7.5, 1.0, 5)
    images, latent = sampler.sample(applied, *args)
    again, _ = sampler.sample(applied, *args)
    base, _ = sampler.sample(model, *args)
    assert images.shape == (4, 32, 32, 3) and latent["samples"].shape == (4, 4, 16, 16)
    assert torch.isfinite(images).all() and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, again)
    assert (images - base).abs().max() > 1e-4  # EchoReel changed the video
    # nothing stays attached: the base model still gives its own output
    assert torch.equal(sampler.sample(model, *args)[0], base)
    # the LATENT decodes with ComfyUI's own VAE Decode to the same frames
    import nodes as comfy_nodes

    (decoded,) = comfy_nodes.VAEDecode().decode(vae, latent)
    torch.testing.assert_close(decoded, images)


def test_two_references_chain(nodes):
    model, text_encoder, vae = nodes["EchoReel_LoadVideoCrafterCheckpoint"].load(LVDM_FILE, "fp32")
    positive, negative = encode(nodes, text_encoder, "a dog"), encode(nodes, text_encoder, "")
    (echoreel,) = nodes["EchoReel_LoadEchoReel"].load(LVDM_ECHOREEL_FILE)
    frames, _, _ = nodes["EchoReel_LoadReferenceVideo"].load("reference.mp4", 4, 2, 0, 32, 32, "crop")
    prism = nodes["EchoReel_ActionPrismEncode"]
    (first,) = prism.encode(echoreel, vae, frames, positive, positive, negative, 0, "mean")
    (both,) = prism.encode(echoreel, vae, frames.flip(0), negative, positive, negative, 0, "mean", add_to=first)
    assert both.cond.shape[1] == 2 * first.cond.shape[1] and torch.equal(both.cond[:, :4], first.cond)


def test_image_to_video(nodes):
    model, text_encoder, vae = nodes["EchoReel_LoadVideoCrafterCheckpoint"].load(I2V_FILE, "auto")
    assert model.preset.is_i2v
    positive, negative = encode(nodes, text_encoder, "a cat"), encode(nodes, text_encoder, "")
    sampler = nodes["EchoReel_VideoCrafterSampler"]
    image = torch.rand(1, 40, 56, 3)
    images, _ = sampler.sample(model, positive, negative, vae, 32, 32, 4, 8, 2, 7.5, 1.0, 1, image=image)
    assert images.shape == (4, 32, 32, 3)
    with pytest.raises(ValueError, match="image-to-video model: connect an image"):
        sampler.sample(model, positive, negative, vae, 32, 32, 4, 8, 2, 7.5, 1.0, 1)


def test_bad_inputs_give_clear_errors(nodes):
    with pytest.raises(FileNotFoundError, match="absent.safetensors: not found in models/videocrafter"):
        nodes["EchoReel_LoadVideoCrafterCheckpoint"].load("absent.safetensors", "auto")
    from comfyui_echoreel_pack.echoreel_core.video_io import VideoReadError

    with pytest.raises(VideoReadError, match="broken.mp4"):
        nodes["EchoReel_LoadReferenceVideo"].load("broken.mp4", 4, 4, 0, 32, 32, "crop")
    model, text_encoder, vae = nodes["EchoReel_LoadVideoCrafterCheckpoint"].load(LVDM_FILE, "auto")
    (i2v_echoreel,) = nodes["EchoReel_LoadEchoReel"].load(I2V_ECHOREEL_FILE)
    positive = encode(nodes, text_encoder, "x")
    frames, _, _ = nodes["EchoReel_LoadReferenceVideo"].load("reference.mp4", 4, 4, 0, 32, 32, "crop")
    (lvdm_echoreel,) = nodes["EchoReel_LoadEchoReel"].load(LVDM_ECHOREEL_FILE)
    (features,) = nodes["EchoReel_ActionPrismEncode"].encode(lvdm_echoreel, vae, frames, positive, positive, positive, 0, "mean")
    with pytest.raises(ValueError, match="these EchoReel weights are for videocrafter.*the model is lvdm"):
        nodes["EchoReel_ApplyEchoReel"].apply(model, i2v_echoreel, features, 1.0, 0.0, 1.0)
    small, _, _ = nodes["EchoReel_LoadReferenceVideo"].load("reference.mp4", 4, 4, 0, 16, 16, "crop")
    with pytest.raises(ValueError, match="need 32x32"):
        nodes["EchoReel_ActionPrismEncode"].encode(lvdm_echoreel, vae, small, positive, positive, positive, 0, "mean")


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
        assert video.VALIDATE_INPUTS(video=name) == message
        for call in (lambda: video.IS_CHANGED(video=name), lambda: video.load(name, 4, 4, 0, 32, 32, "crop")):
            with pytest.raises(ValueError) as caught:
                call()
            assert str(caught.value) == message
    assert video.VALIDATE_INPUTS(video="made.mp4 [output]") is True
    assert video.load("made.mp4 [output]", 4, 4, 0, 32, 32, "crop")[0].shape == (4, 32, 32, 3)

    checkpoint, echoreel = nodes["EchoReel_LoadVideoCrafterCheckpoint"], nodes["EchoReel_LoadEchoReel"]
    for name in ("../../etc/passwd", "/etc/passwd", runtime.model_path("videocrafter", LVDM_FILE)):
        message = f'refused "{name}": files must be inside models/videocrafter or models/checkpoints'
        assert checkpoint.VALIDATE_INPUTS(ckpt_name=name) == message
        with pytest.raises(ValueError) as caught:
            checkpoint.load(name, "auto")
        assert str(caught.value) == message
        assert echoreel.VALIDATE_INPUTS(echoreel_name=name) == f'refused "{name}": files must be inside models/echoreel'


def test_the_example_video_is_copied_whole_or_not_at_all(nodes, tmp_path, monkeypatch, caplog):
    """The node copies the shipped toy reference into the input folder; a copy that cannot be
    written is a warning (the node list still loads), never half a video that would then stay."""
    import folder_paths

    from comfyui_echoreel_pack.echoreel_core.toy.models import SHIPPED_DIR, TOY_REFERENCE_FILE

    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path))
    name = pathlib.Path(TOY_REFERENCE_FILE).name
    video = type(nodes["EchoReel_LoadReferenceVideo"])
    with file_size_limit(1024):
        assert video.INPUT_TYPES()["required"]["video"][0] == []
    assert f"cannot write {tmp_path / name}: File too large" in caplog.text and not any(tmp_path.iterdir())
    assert video.INPUT_TYPES()["required"]["video"][0] == [name]
    assert (tmp_path / name).read_bytes() == (SHIPPED_DIR / TOY_REFERENCE_FILE).read_bytes()


def test_long_video_sampler_chains_clips(nodes):
    model, text_encoder, vae = nodes["EchoReel_LoadVideoCrafterCheckpoint"].load(LVDM_FILE, "auto")
    positive, negative = encode(nodes, text_encoder, "a red circle"), encode(nodes, text_encoder, "")
    long_sampler = nodes["EchoReel_LongVideoSampler"]
    common = (positive, negative, vae, 32, 32, 4, 8, 3, 7.5, 1.0, 5)
    images, latent = long_sampler.sample(model, *common, 3, 2, 4.0, 0.4, False)
    assert images.shape == (12, 32, 32, 3) and latent["samples"].shape == (12, 4, 16, 16)
    dropped, _ = long_sampler.sample(model, *common, 3, 2, 4.0, 0.4, True)
    assert dropped.shape == (3 * 4 - 2 * 2, 32, 32, 3)
    one_clip, _ = long_sampler.sample(model, *common, 1, 2, 4.0, 0.4, False)
    single, _ = nodes["EchoReel_VideoCrafterSampler"].sample(model, *common)
    assert torch.equal(one_clip, single)  # one clip is the ordinary sampler
