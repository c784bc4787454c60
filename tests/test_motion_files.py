"""Motion files (issue 21): action features saved, read back bit for bit, refused with other
EchoReel weights, damaged files named; the CLI on tiny and shipped toy files; Save Motion and
Load Motion through a real ComfyUI giving the same video as encoding the reference again."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from comfyui_env import (
    I2V_ECHOREEL_FILE,
    LVDM_ECHOREEL_FILE,
    LVDM_FILE,
    ROOT,
    import_pack_in_process,
    write_reference_video,
    write_tiny_weights,
)
from echoreel_core.loading.checkpoints import load_video_model, save_video_model
from echoreel_core.echoreel.features import ActionFeatures, Reference, action_features, encode_reference
from echoreel_core.echoreel.weights import EchoReel, EchoReelConfig, load_echoreel, save_echoreel
from echoreel_core.common.files import temporaries
from echoreel_core.models.video_model import VideoModel
from echoreel_core.motion import (
    FORMAT,
    MotionFileError,
    file_sha256,
    frames_sha256,
    load_motion,
    prism_sha256,
    read_motion,
    save_motion,
)
from echoreel_core.motion.cli import main
from echoreel_core.pipelines.generate import EchoReelGuidance, SamplingSettings, generate_latents
from echoreel_core.models.presets import tiny_preset
from echoreel_core.toy.models import TOY_ECHOREEL_FILE, TOY_MODEL_FILE, TOY_REFERENCE_FILE, shipped
from echoreel_core.video_io import frames_to_model_input, read_video_frames


def tiny_echoreel(name: str = "lvdm-short-t2v", seed: int = 0) -> EchoReel:
    """A tiny random EchoReel for preset `name` (reference latent 4x4: Tout 64 wide)."""
    torch.manual_seed(seed)
    config = EchoReelConfig.for_preset(tiny_preset(name), layers=1, latent_dim=16, heads=2, head_dim=8,
                                       latent_text_dim=16, latent_height=4, latent_width=4)
    echoreel = EchoReel(config).eval()
    for p in echoreel.parameters():
        p.data.normal_(0, 0.1)
    return echoreel


def random_features(width: int = 64, refs: int = 2, frames: int = 4, dtype=torch.float32, info=None) -> ActionFeatures:
    g = torch.Generator().manual_seed(7)
    cond, uncond = torch.randn(2, 1, refs * frames, width, generator=g).to(dtype)
    return ActionFeatures(cond, uncond, frames, dict(info or {}))


INFO = {"source_video": "walk.mp4", "source_sha256": "ab" * 32, "stride": 4, "fps": "24", "caption": "a man walking",
        "prompt": "a robot walking", "negative_prompt": ""}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_and_read_round_trip_bit_equal(tmp_path, dtype):
    echoreel = tiny_echoreel()
    features = random_features(dtype=dtype)
    path = save_motion(tmp_path / "walk.safetensors", features, echoreel, INFO, weights_name="echoreel_lvdm.safetensors")
    assert temporaries(tmp_path) == []
    motion = read_motion(path)
    loaded = motion.features
    assert loaded.cond.dtype == dtype and torch.equal(loaded.cond, features.cond)
    assert torch.equal(loaded.uncond, features.uncond) and loaded.frames_per_reference == 4
    assert loaded.info == {k: str(v) for k, v in INFO.items()}  # the empty negative prompt is a value, kept
    m = motion.metadata
    assert (m["format"], m["format_version"], m["family"], m["references"], m["frames"]) == (FORMAT, "1", "lvdm", "2", "4")
    assert m["prism_sha256"] == prism_sha256(echoreel.video_inject_process) and len(m["prism_sha256"]) == 64
    assert m["echoreel_config"] == echoreel.config.describe() and m["echoreel_weights"] == "echoreel_lvdm.safetensors"
    # saved again from the loaded features: the provenance travels with them; a given value wins, None keeps
    again = save_motion(tmp_path / "again.safetensors", loaded, echoreel, {"prompt": "a cat walking", "caption": None})
    info = read_motion(again).features.info
    assert info["prompt"] == "a cat walking" and info["caption"] == "a man walking" and info["source_video"] == "walk.mp4"
    # safetensors: an 8-byte length, the JSON header (names, shapes, metadata), then the tensors' bytes
    header = int.from_bytes(path.read_bytes()[:8], "little")
    assert motion.size == 8 + header + 2 * features.cond.numel() * features.cond.element_size()


def test_features_of_other_weights_or_shapes_are_not_saved(tmp_path):
    echoreel = tiny_echoreel()
    with pytest.raises(ValueError, match=r"\(1, 8, 32\).*make \(b, n_refs \* t, 64\)"):
        save_motion(tmp_path / "x.safetensors", random_features(width=32), echoreel)
    with pytest.raises(ValueError, match="8 feature frames do not split into references of 3 frames"):
        save_motion(tmp_path / "x.safetensors", dataclasses.replace(random_features(), frames_per_reference=3), echoreel)
    assert list(tmp_path.iterdir()) == []


def test_prism_hash_is_of_the_values_and_follows_changes():
    echoreel = tiny_echoreel()
    first = prism_sha256(echoreel.video_inject_process)
    same = tiny_echoreel()  # the same values in other tensors
    assert prism_sha256(same.video_inject_process) == first
    with torch.no_grad():
        same.integration[0].parameters().__next__().add_(1)  # not the Prism: the features do not change
        assert prism_sha256(same.video_inject_process) == first
        next(same.video_inject_process.parameters()).view(-1)[0] += 1e-3  # in place: the cache must see it
    assert prism_sha256(same.video_inject_process) != first
    assert prism_sha256(tiny_echoreel(seed=1).video_inject_process) != first


def test_motion_of_other_weights_is_refused_naming_both(tmp_path):
    lvdm = tiny_echoreel("lvdm-short-t2v")
    path = save_motion(tmp_path / "walk.safetensors", random_features(), lvdm, weights_name="echoreel_lvdm.safetensors")
    assert torch.equal(load_motion(path, tiny_echoreel("lvdm-short-t2v")).cond, random_features().cond)
    videocrafter = tiny_echoreel("videocrafter2-t2v-512")
    mine, theirs = prism_sha256(lvdm.video_inject_process)[:16], prism_sha256(videocrafter.video_inject_process)[:16]
    with pytest.raises(MotionFileError) as family:
        load_motion(path, videocrafter)
    text = str(family.value)
    assert "walk.safetensors" in text and "another model family" in text
    assert lvdm.config.describe() in text and videocrafter.config.describe() in text and mine in text and theirs in text
    assert "echoreel_lvdm.safetensors" in text
    retrained = tiny_echoreel("lvdm-short-t2v", seed=1)  # same family and sizes, other Prism values
    with pytest.raises(MotionFileError) as prism:
        load_motion(path, retrained)
    text = str(prism.value)
    assert "other Action Prism weights" in text and mine in text
    assert prism_sha256(retrained.video_inject_process)[:16] in text


def test_damaged_or_foreign_files_give_clear_errors(tmp_path):
    echoreel = tiny_echoreel()
    good = save_motion(tmp_path / "walk.safetensors", random_features(), echoreel).read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[: len(good) - 100])
    with pytest.raises(MotionFileError, match=r"truncated\.safetensors: not a readable safetensors file .* truncated or corrupt"):
        read_motion(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(MotionFileError, match="garbage.safetensors: not a readable safetensors file"):
        read_motion(garbage)
    weights = save_echoreel(echoreel, tmp_path / "echoreel.safetensors")
    with pytest.raises(MotionFileError, match="echoreel.safetensors: not an EchoReel motion file \\(format 'echoreel.weights'"):
        read_motion(weights)
    meta = {"format": FORMAT, "format_version": "1", "frames": "4", "family": "lvdm"}
    cases = {
        "newer": ({"cond": torch.zeros(1, 4, 64), "uncond": torch.zeros(1, 4, 64)}, {**meta, "format_version": "2"},
                  "motion format version 2; this EchoReel reads version 1"),
        "missing": ({"cond": torch.zeros(1, 4, 64)}, meta, "expected the tensors cond, uncond, found cond"),
        "shapes": ({"cond": torch.zeros(1, 4, 64), "uncond": torch.zeros(1, 8, 64)}, meta, r"cond \(1, 4, 64\) and uncond \(1, 8, 64\)"),
        "frames": ({"cond": torch.zeros(1, 6, 64), "uncond": torch.zeros(1, 6, 64)}, meta, "6 feature frames do not split"),
        "nan": ({"cond": torch.full((1, 4, 64), float("nan")), "uncond": torch.zeros(1, 4, 64)}, meta, "damaged"),
    }
    for name, (tensors, metadata, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        with pytest.raises(MotionFileError, match=message):
            read_motion(path)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A tiny LVDM model and EchoReel on disk (32x32 frames: a 4x4 reference latent) and a reference video."""
    base = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = VideoModel(dataclasses.replace(tiny_preset("lvdm-short-t2v"), height=32, width=32)).eval()
    for p in model.unet.parameters():
        p.data.normal_(0, 0.05)
    save_video_model(model, base / "model.safetensors")
    config = EchoReelConfig.for_preset(model.preset, layers=1, latent_dim=16, heads=2, head_dim=8, latent_text_dim=16)
    torch.manual_seed(1)
    echoreel = EchoReel(config)
    for p in echoreel.parameters():
        p.data.normal_(0, 0.05)
    save_echoreel(echoreel, base / "echoreel.safetensors")
    return base, write_reference_video(base / "walk.mp4")


def test_cli_motion_samples_the_same_video_as_the_live_reference(tiny_files, capsys):
    """encode -> file -> load gives the features and the core sampler's video of encoding the reference again."""
    base, video = tiny_files
    out = base / "motions" / "walk.safetensors"
    args = ["encode", str(video), "--model", str(base / "model.safetensors"), "--echoreel", str(base / "echoreel.safetensors"),
            "--caption", "a red square moving right", "--prompt", "a blue circle", "--frames", "4", "--stride", "2",
            "--seed", "3", "--out", str(out), "--threads", "1"]
    assert main(args) == 0
    assert "walk.safetensors: EchoReel motion" in capsys.readouterr().out
    model = load_video_model(base / "model.safetensors")
    echoreel = load_echoreel(base / "echoreel.safetensors")
    loaded = load_motion(out, echoreel)
    frames, info, _ = read_video_frames(video, num_frames=4, stride=2, size=(32, 32))
    with torch.no_grad():
        latents = encode_reference(model.vae, frames_to_model_input(frames), torch.Generator().manual_seed(3))
        prompt, negative = model.encode_text(["a blue circle"]), model.encode_text([""])
        live = action_features(echoreel, prompt, negative, [Reference(latents, model.encode_text(["a red square moving right"]))])
    assert torch.equal(loaded.cond, live.cond) and torch.equal(loaded.uncond, live.uncond)
    assert loaded.info["frames_sha256"] == frames_sha256(frames) and loaded.info["source_sha256"] == file_sha256(video)
    assert (loaded.info["stride"], loaded.info["fps"], loaded.info["size"]) == ("2", f"{info.fps:g}", "32x32")
    assert loaded.info["negative_prompt"] == "" and loaded.info["prompt"] == "a blue circle"
    settings = SamplingSettings(height=32, width=32, frames=4, fps=8, steps=2, cfg=7.5, seed=5)
    with torch.no_grad():
        videos = [generate_latents(model, prompt, negative, settings, echoreel=EchoReelGuidance(echoreel, f))
                  for f in (loaded, live)]
        base_video = generate_latents(model, prompt, negative, settings)
    assert torch.equal(videos[0], videos[1]) and (videos[0] - base_video).abs().max() > 1e-4
    # frame sizes the weights were not trained for are refused before any work
    assert main(args[:-4] + ["--width", "64", "--out", str(out), "--threads", "1"]) == 1
    assert "need 32x32 reference frames" in capsys.readouterr().err


def test_cli_on_the_shipped_toy_files_and_info(tmp_path, capsys):
    out = tmp_path / "orbit.safetensors"
    assert main(["encode", str(shipped(TOY_REFERENCE_FILE)), "--caption", "a blue square", "--prompt", "a red circle",
                 "--out", str(out), "--threads", "1"]) == 0
    capsys.readouterr()
    motion = read_motion(out)
    echoreel = load_echoreel(shipped(TOY_ECHOREEL_FILE))
    prism = echoreel.config.prism
    width = prism.latent_channels * prism.latent_height * prism.latent_width  # a token a frame, its latent's size
    assert motion.features.cond.shape == (1, 16, width) and motion.features.cond.dtype == torch.float32
    assert prism_sha256(echoreel.video_inject_process) == motion.metadata["prism_sha256"]
    assert motion.metadata["echoreel_weights"] == shipped(TOY_ECHOREEL_FILE).name
    assert out.stat().st_size < 2 * 16 * width * 4 + 8_000  # cond and uncond in float32, a little metadata
    # `python -m echoreel_core.motion info` in its own process prints the metadata
    done = subprocess.run([sys.executable, "-m", "echoreel_core.motion", "info", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for line in ("orbit.safetensors: EchoReel motion, format version 1", f"{out.stat().st_size:,} bytes",
                 f"cond and uncond (1, 16, {width}) float32: 1 reference(s) of 16 frames",
                 f"Prism sha256  {motion.metadata['prism_sha256']}", "source_video  toy_reference.mp4",
                 f"source_sha256 {file_sha256(shipped(TOY_REFERENCE_FILE))}", "stride        4", "size          64x64",
                 "caption       a blue square", "prompt        a red circle", "negative_prompt(empty)",
                 "videocrafter (7 sites"):
        assert line in text, line
    assert main(["info", str(shipped(TOY_MODEL_FILE))]) == 1
    assert "not an EchoReel motion file" in capsys.readouterr().err


# ---------------------------------------------------------------- through ComfyUI's nodes

@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    pack = import_pack_in_process()
    import folder_paths

    base = tmp_path_factory.mktemp("comfyui")
    write_tiny_weights(base / "models")
    for kind in ("videocrafter", "echoreel", "echoreel_motion"):
        folder_paths.add_model_folder_path(kind, str(base / "models" / kind), is_default=True)
    (base / "input").mkdir()
    (base / "temp").mkdir()
    folder_paths.set_input_directory(str(base / "input"))
    folder_paths.set_temp_directory(str(base / "temp"))  # where node previews go
    write_reference_video(base / "input" / "reference.mp4")
    asyncio.run(pack.comfy_entrypoint())
    return base, {cls.define_schema().node_id: cls for cls in pack.nodes.NODES}


def test_motion_folder_is_registered_for_safetensors(comfy):
    import folder_paths

    base, _ = comfy
    paths, extensions = folder_paths.folder_names_and_paths["echoreel_motion"]
    assert paths[0] == str(base / "models" / "echoreel_motion") and extensions == {".safetensors"}


def test_save_then_load_motion_gives_the_video_of_encoding_again(comfy):
    import nodes as comfy_nodes

    base, nodes = comfy
    model, clip, vae = nodes["EchoReel_LoadVideoCrafterCheckpoint"].execute(LVDM_FILE, "auto")
    (echoreel,) = nodes["EchoReel_LoadEchoReel"].execute(LVDM_ECHOREEL_FILE)
    encode = comfy_nodes.CLIPTextEncode().encode
    positive, negative = encode(clip, "a red circle")[0], encode(clip, "")[0]
    caption = encode(clip, "a red square moving right")[0]
    loaded = nodes["EchoReel_LoadReferenceVideo"].execute(frames=4, stride=4, start=0, width=32, height=32,
                                                          resize="squash (official)", video="reference.mp4")
    frames, fps = loaded[0], loaded[2]

    def prism():
        return nodes["EchoReel_ActionPrismEncode"].execute(echoreel, vae, frames, caption, positive, negative, 0,
                                                           "sample (official)")[0]

    saved = nodes["EchoReel_SaveMotion"].execute(prism(), echoreel, "walks/walk", source_video="reference.mp4",
                                                 caption="a red square moving right", prompt="a red circle",
                                                 reference=frames, stride=4, fps=fps)
    (name,) = saved.args
    path = base / "models" / "echoreel_motion" / "walks" / "walk_00001_.safetensors"
    assert name == "walks/walk_00001_.safetensors" and path.is_file()
    text = saved.ui.as_dict()["text"][0]
    assert str(path) in text and f"{path.stat().st_size:,} bytes" in text
    load = nodes["EchoReel_LoadMotion"]
    assert name in next(i for i in load.define_schema().inputs if i.id == "motion_name").options
    assert load.validate_inputs(name) is True
    assert "refused" in load.validate_inputs("../echoreel/" + LVDM_ECHOREEL_FILE)
    loaded = load.execute(name, echoreel)
    features = loaded.args[0]
    info = features.info
    assert info["source_sha256"] == file_sha256(base / "input" / "reference.mp4") and info["frames_sha256"] == frames_sha256(frames)
    assert (info["stride"], info["fps"], info["size"], info["prompt"]) == ("4", f"{fps:g}", "32x32", "a red circle")
    assert "negative_prompt" not in info  # left empty in the node: unknown, not recorded
    # a second save counts on; the core reads the node's file with the core-loaded weights (same Prism hash)
    assert nodes["EchoReel_SaveMotion"].execute(features, echoreel, "walks/walk").args[0] == "walks/walk_00002_.safetensors"
    core_weights = load_echoreel(base / "models" / "echoreel" / LVDM_ECHOREEL_FILE)
    assert torch.equal(load_motion(path, core_weights).cond, features.cond)

    sampler = nodes["EchoReel_VideoCrafterSampler"]
    args = (positive, negative, vae, 32, 32, 4, 8, 3, 7.5, 1.0, 5)
    apply = nodes["EchoReel_ApplyEchoReel"].execute
    from_file = sampler.execute(apply(model, echoreel, features, 1.0, 0.0, 1.0)[0], *args)[0]
    live = sampler.execute(apply(model, echoreel, prism(), 1.0, 0.0, 1.0)[0], *args)[0]
    assert torch.equal(from_file, live)
    assert (from_file - sampler.execute(model, *args)[0]).abs().max() > 1e-4  # and the motion did act


def test_load_motion_refuses_other_weights_and_damaged_files(comfy):
    from comfyui_echoreel_pack.echoreel_core.echoreel.features import ActionFeatures as PackFeatures

    base, nodes = comfy
    (lvdm,) = nodes["EchoReel_LoadEchoReel"].execute(LVDM_ECHOREEL_FILE)
    (i2v,) = nodes["EchoReel_LoadEchoReel"].execute(I2V_ECHOREEL_FILE)
    features = PackFeatures(torch.randn(1, 4, lvdm.model.config.prism.tout_dim),
                              torch.randn(1, 4, lvdm.model.config.prism.tout_dim), 4)
    (name,) = nodes["EchoReel_SaveMotion"].execute(features, lvdm, "refused").args
    with pytest.raises(ValueError, match='source_video: refused "../secret.mp4"'):  # never hashes outside ComfyUI's folders
        nodes["EchoReel_SaveMotion"].execute(features, lvdm, "refused", source_video="../secret.mp4")
    with pytest.raises(ValueError, match="another model family") as error:
        nodes["EchoReel_LoadMotion"].execute(name, i2v)
    assert lvdm.model.config.describe() in str(error.value) and i2v.model.config.describe() in str(error.value)
    path = base / "models" / "echoreel_motion" / name
    path.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(ValueError, match=f"{name}: not a readable safetensors file .*truncated or corrupt"):
        nodes["EchoReel_LoadMotion"].execute(name, lvdm)
