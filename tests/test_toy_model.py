"""The shipped toy model (echoreel_core/toy): its files, a reduced held-out evaluation in which
EchoReel must clearly beat the base model, and the retraining command run end to end at a
few steps per stage."""

import json
import math
import pathlib
import re
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from echoreel_core.loading.checkpoints import load_video_model
from echoreel_core.echoreel.weights import load_echoreel
from echoreel_core.motion import load_motion
from echoreel_core.toy import metrics, pretrain, retrain
from echoreel_core.toy.evaluate import EvalSettings, evaluate
from echoreel_core.toy.evaluate import main as evaluate_main
from echoreel_core.toy.models import (
    SHIPPED_DIR, TOY_ECHOREEL_FILE, TOY_FIRST_FRAME_FILE, TOY_I2V_ECHOREEL_FILE, TOY_I2V_MODEL_FILE, TOY_I2V_PRESET,
    TOY_MODEL_FILE, TOY_MOTION_CAPTION, TOY_MOTION_FILE, TOY_MOTION_PROMPT, TOY_PRESET, TOY_REFERENCE_FILE, shipped,
)
from echoreel_core.toy.world import DEFAULT_SPLIT, HELD_OUT_GROUPS, World, write_dataset
from echoreel_core.video_io import read_video_frames


@pytest.fixture(scope="module")
def toy():
    return load_video_model(shipped(TOY_MODEL_FILE)), load_echoreel(shipped(TOY_ECHOREEL_FILE))


def test_shipped_files_hold_the_toy_architecture(toy):
    model, echoreel = toy
    trained_scale = model.preset.vae.scale_factor
    assert model.preset == replace(TOY_PRESET, vae=replace(TOY_PRESET.vae, scale_factor=trained_scale))
    assert 0.1 < trained_scale < 10.0 and trained_scale != 0.18215  # measured on the trained VAE, not SD's
    echoreel.check_fits(model.preset, model.unet)  # raises on a mismatch
    assert echoreel.config.query_positions  # the toy's small UNet needs position-aware queries
    with safe_open(str(shipped(TOY_MODEL_FILE)), "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
    schedule = {"alphas_cumprod", "scale_arr"}  # kept in float32, as the sampler reads them
    assert {d for k, d in dtypes.items() if k not in schedule} == {torch.float16}  # shipped small
    assert {dtypes[k] for k in schedule} == {torch.float32}
    total = sum((SHIPPED_DIR / name).stat().st_size for name in (TOY_MODEL_FILE, TOY_ECHOREEL_FILE, TOY_REFERENCE_FILE))
    assert total < 24 * 2**20
    reference, info, repeated = read_video_frames(shipped(TOY_REFERENCE_FILE), num_frames=16, stride=4,
                                                  size=(64, 64))
    assert repeated == 0 and info.frame_count == World().file_frames
    track = metrics.track(reference)
    assert metrics.detection_rate(track) == 1.0 and metrics.video_object(track) == ("blue", "square")


@pytest.fixture(scope="module")
def toy_i2v():
    return load_video_model(shipped(TOY_I2V_MODEL_FILE)), load_echoreel(shipped(TOY_I2V_ECHOREEL_FILE))


def test_shipped_image_to_video_files_hold_the_i2v_architecture(toy, toy_i2v):
    """The I2V toy shares the text-to-video toy's VAE and text encoder (trained from it, those
    frozen); its first frame is a red circle where the demo reference's object starts."""
    (model, _), (i2v, echoreel) = toy, toy_i2v
    assert i2v.preset == replace(TOY_I2V_PRESET, vae=model.preset.vae)
    echoreel.check_fits(i2v.preset, i2v.unet)
    assert echoreel.config == load_echoreel(shipped(TOY_ECHOREEL_FILE)).config  # grown from the T2V toy's
    for part in ("vae", "text_encoder"):
        ours, theirs = getattr(i2v, part).state_dict(), getattr(model, part).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), part
    files = (TOY_MODEL_FILE, TOY_ECHOREEL_FILE, TOY_REFERENCE_FILE, TOY_I2V_MODEL_FILE, TOY_I2V_ECHOREEL_FILE,
             TOY_FIRST_FRAME_FILE)
    assert sum((SHIPPED_DIR / name).stat().st_size for name in files) < 42 * 2**20
    first = metrics.track(read_video_frames(shipped(TOY_FIRST_FRAME_FILE), num_frames=1)[0])[0]
    reference = metrics.track(read_video_frames(shipped(TOY_REFERENCE_FILE), num_frames=1)[0])[0]
    assert (first.colour, first.shape) == ("red", "circle")
    assert abs(first.x - reference.x) < 1 and abs(first.y - reference.y) < 1


def test_reduced_image_to_video_evaluation_keeps_the_first_frame(toy_i2v, tmp_path):
    """The I2V toy on one pair of each original held-out action, each started from its target's
    first frame, 10 steps: EchoReel transfers the motion, frame 0 keeps the image's object where
    the image has it, and no colour comes from the reference (measured: fidelity -0.079 without,
    0.346 with; frame 0's object 11.8 px from the image's without, 5.3 with; on the 70 pairs at 25
    steps 3.6 px, the shrinking pairs 8.6: README)."""
    model, echoreel = toy_i2v
    report = evaluate(model, echoreel, write_dataset(tmp_path / "data", "eval", 3, seed=0), EvalSettings(steps=10))
    without, with_echoreel = report["overall"]["without"], report["overall"]["with_echoreel"]
    assert with_echoreel["motion_fidelity"] - without["motion_fidelity"] > 0.25
    assert with_echoreel["detection_rate"] >= 0.9 and with_echoreel["colour_leakage"] == 0
    assert with_echoreel["start_offset"] < min(6, without["start_offset"] / 2)  # pixels


def test_missing_shipped_file_says_how_to_rebuild():
    with pytest.raises(FileNotFoundError, match="python -m echoreel_core.toy.retrain"):
        shipped("videocrafter/nothing.safetensors")


def test_reduced_evaluation_shows_echoreel_transferring_motion(toy, tmp_path):
    """One pair of each held-out action (the eval set's first seven: the original three, then the
    four new motions), 10 steps: EchoReel must beat the base alone on motion and path fidelity by a
    wide margin (measured: 0.017 without, 0.738 with; paths 0.120 and 0.772; on the 70 pairs at 25
    steps see the README), and the base alone must not know these actions."""
    model, echoreel = toy
    data = write_dataset(tmp_path / "data", "eval", 7, seed=0)
    report = evaluate(model, echoreel, data, EvalSettings(steps=10), out_dir=tmp_path / "eval", grids=1)
    assert sorted(report["per_action"]) == sorted(DEFAULT_SPLIT.held_out[:7])
    assert {name: group["pairs"] for name, group in report["groups"].items()} == {"original": 3, "new_motions": 4}
    assert set(HELD_OUT_GROUPS["original"]) | set(HELD_OUT_GROUPS["new_motions"]) == set(report["per_action"])
    overall = report["overall"]
    for way in ("without", "with_echoreel"):
        assert -1 <= overall[way]["motion_fidelity"] <= 1 and -1 <= overall[way]["path_fidelity"] <= 1
        assert overall[way]["detection_rate"] >= 0.95  # the toy model draws an object in (nearly) every frame
        assert overall[way]["colour_leakage"] == 0  # the reference's colour never reaches the video
    assert overall["round_trip"]["motion_fidelity"] > 0.9  # the reference survives the VAE
    with_echoreel, without = overall["with_echoreel"], overall["without"]
    assert with_echoreel["motion_fidelity"] > 0.65 and with_echoreel["path_fidelity"] > 0.7
    assert with_echoreel["motion_fidelity"] - without["motion_fidelity"] > 0.5
    assert with_echoreel["path_fidelity"] - without["path_fidelity"] > 0.5
    assert abs(without["motion_fidelity"]) < 0.2  # the base alone does not know these actions
    pairs = report["pairs"]
    assert any(p["without"] != p["with_echoreel"] for p in pairs)  # EchoReel changes the samples
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert math.isclose(saved["overall"]["with_echoreel"]["motion_fidelity"],
                        overall["with_echoreel"]["motion_fidelity"])
    assert len(list((tmp_path / "eval").glob("grid_*.gif"))) == 1


def test_fit_lowers_the_loss_keeps_an_average_and_stops_on_nan():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(8))
    target = torch.linspace(-1, 1, 8)
    schedule = pretrain.Schedule(steps=200, lr=0.05, warmup=5, ema=0.9, log_every=100)
    averages = pretrain.fit([weight], lambda step: (weight - target).square().mean(), schedule, "quadratic")
    assert float((weight - target).abs().max()) < 1e-2
    assert float((averages[0] - target).abs().max()) < 5e-2 and not torch.equal(averages[0], weight.detach())
    with pytest.raises(FloatingPointError, match="step 0"):
        pretrain.fit([weight], lambda step: weight.sum() * float("nan"), schedule, "broken")


def test_base_phases_that_continue_need_a_model_to_continue(tmp_path, capsys):
    out, vae = str(tmp_path / "base.safetensors"), str(tmp_path / "vae.safetensors")
    for argv in (["--phase", "clean"], ["--phase", "noisy"], ["--init", out]):  # the last: "all" from an init
        with pytest.raises(SystemExit) as refused:
            pretrain.main(["base", out, "--vae", vae] + argv)
        assert refused.value.code == 2
        assert "the all phase starts from scratch; the noisy and clean phases need --init" in capsys.readouterr().err
    assert not (tmp_path / "base.safetensors").exists()


def test_evaluate_help_names_files_that_exist(capsys):
    with pytest.raises(SystemExit):
        evaluate_main(["--help"])
    text = capsys.readouterr().out
    for default in (TOY_MODEL_FILE, TOY_ECHOREEL_FILE):
        assert str(SHIPPED_DIR / default) in text  # in full, on one line
    # every path it names (a "/" inside, or a source, doc or weights file): outputs are only named as folders
    named = re.findall(r"[\w.~-]*/[\w./-]+|[\w-]+\.(?:md|py|safetensors|mp4)\b", text)
    assert len(named) >= 3
    root = pathlib.Path(__file__).resolve().parents[1]
    for name in named:
        path = pathlib.Path(name.rstrip("."))
        assert (path if path.is_absolute() else root / path).exists(), name


def refuse_the_shipped_folder(write):
    """`write`, failing instead of writing into echoreel_core/toy/shipped: a test must never
    replace the files the pack ships."""
    def guarded(*args, **kwargs):
        for arg in [a for arg in args for a in (arg if isinstance(arg, list) else [arg])]:  # a main()'s argv too
            if isinstance(arg, (str, pathlib.Path)) and pathlib.Path(arg).resolve().is_relative_to(SHIPPED_DIR):
                raise AssertionError(f"retrain wrote into the shipped folder: {arg}")
        return write(*args, **kwargs)
    return guarded


def test_retrain_runs_every_stage_end_to_end(tmp_path, monkeypatch):
    """The one retraining command at 2-4 steps a stage: data, VAE, base (three phases), EchoReel, the
    image-to-video toy and its EchoReel, ship, evaluate both; by default into the work folder, never
    over the shipped files."""
    for name in ("save_video_model", "save_echoreel", "write_demo_reference", "write_first_frame", "motion_main"):
        monkeypatch.setattr(retrain, name, refuse_the_shipped_folder(getattr(retrain, name)))
    out = tmp_path / "work" / "shipped"  # the default --out
    code = retrain.main(["--work", str(tmp_path / "work"), "--pairs", "4", "--vae-steps", "2",
                         "--base-steps", "2", "--motion-steps", "2", "--detail-steps", "2",
                         "--echoreel-steps", "2", "--i2v-steps", "2", "--echoreel-i2v-steps", "2",
                         "--eval-pairs", "1", "--eval-steps", "2", "--threads", "1"])
    assert code == 0
    assert torch.get_num_threads() == 1  # --threads reached the trainer and the evaluation (conftest.py's count)
    model = load_video_model(out / TOY_MODEL_FILE)
    assert model.preset.name == TOY_PRESET.name and model.preset.vae.scale_factor != TOY_PRESET.vae.scale_factor
    retrained = load_echoreel(out / TOY_ECHOREEL_FILE)
    retrained.check_fits(model.preset, model.unet)
    assert retrained.config.query_positions  # from the toy training config
    assert (out / TOY_REFERENCE_FILE).is_file()
    i2v = load_video_model(out / TOY_I2V_MODEL_FILE)
    assert i2v.preset.name == TOY_I2V_PRESET.name and i2v.preset.vae == model.preset.vae  # one VAE for both toys
    load_echoreel(out / TOY_I2V_ECHOREEL_FILE).check_fits(i2v.preset, i2v.unet)
    first = metrics.track(read_video_frames(out / TOY_FIRST_FRAME_FILE, num_frames=1)[0])
    assert metrics.video_object(first) == ("red", "circle")
    motion = load_motion(out / TOY_MOTION_FILE, retrained)  # refused unless it fits the retrained Prism
    assert (motion.info["caption"], motion.info["prompt"]) == (TOY_MOTION_CAPTION, TOY_MOTION_PROMPT)
    for report in ("eval", "eval_i2v"):
        assert json.loads((tmp_path / "work" / report / "report.json").read_text())["overall"]["pairs"] == 1
    # a second run finds every stage done (their outputs untouched) and only ships and evaluates again
    stages = [tmp_path / "work" / name for name in ("vae.safetensors", "base.safetensors", "base_motion.safetensors",
                                                    "base_detail.safetensors", "echoreel/echoreel.safetensors",
                                                    "i2v.safetensors", "echoreel_i2v/echoreel.safetensors",
                                                    "data/prism/prism.json")]
    written = [p.stat().st_mtime_ns for p in stages]
    # an EchoReel stage cut short after a save (its export written, no finished mark) runs again, resuming
    (tmp_path / "work" / "echoreel_i2v" / "finished").unlink()
    assert retrain.main(["--work", str(tmp_path / "work"), "--eval-pairs", "1", "--eval-steps", "2", "--threads", "1",
                         "--echoreel-i2v-steps", "3"]) == 0
    assert torch.load(tmp_path / "work" / "echoreel_i2v" / "checkpoints" / "step_00000003.pt", weights_only=True)["step"] == 3
    written = [p.stat().st_mtime_ns for p in stages]
    elsewhere = tmp_path / "elsewhere"
    assert retrain.main(["--work", str(tmp_path / "work"), "--out", str(elsewhere), "--eval-pairs", "1",
                         "--eval-steps", "2", "--threads", "1"]) == 0
    assert [p.stat().st_mtime_ns for p in stages] == written
    assert all((elsewhere / name).is_file() for name in (TOY_MODEL_FILE, TOY_ECHOREEL_FILE, TOY_REFERENCE_FILE,
                                                         TOY_I2V_MODEL_FILE, TOY_I2V_ECHOREEL_FILE, TOY_FIRST_FRAME_FILE,
                                                         TOY_MOTION_FILE))


def test_a_cut_short_pretrain_stage_resumes_bit_for_bit(tmp_path, monkeypatch):
    """A stage with a state file writes it every STATE_EVERY steps; run again with that file (here
    holding step 2 of 4), it continues from there and ends with the very weights of the uncut run:
    the parameters, their average, AdamW's moments and every random stream (clips, captions,
    noise) are restored. A state of another schedule is refused, naming the file."""
    monkeypatch.setattr(pretrain, "STATE_EVERY", 2)
    vae_schedule = replace(pretrain.VAE_SCHEDULE, steps=4, warmup=2)
    vae_state = tmp_path / "vae.state.safetensors"
    uncut = pretrain.train_vae(schedule=vae_schedule, state_path=vae_state)
    with safe_open(str(vae_state), "pt") as f:
        assert f.metadata()["step"] == "2"
    resumed = pretrain.train_vae(schedule=vae_schedule, state_path=vae_state)
    assert uncut.config == resumed.config  # the latent scale, measured after training, too
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in uncut.state_dict().items())
    fresh = pretrain.train_vae(schedule=replace(vae_schedule, steps=2))
    assert not torch.equal(fresh.state_dict()["decoder.conv_out.weight"], uncut.state_dict()["decoder.conv_out.weight"])

    base_schedule = replace(pretrain.BASE_SCHEDULE, steps=4, warmup=2)
    base_state = tmp_path / "base.state.safetensors"
    uncut = pretrain.train_base(resumed, schedule=base_schedule, state_path=base_state)
    again = pretrain.train_base(resumed, schedule=base_schedule, state_path=base_state)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in uncut.state_dict().items())
    with pytest.raises(ValueError, match=re.escape(str(base_state)) + ".*schedule expected"):
        pretrain.train_base(resumed, schedule=replace(base_schedule, steps=6), state_path=base_state)


def test_the_toy_presets_latents_and_the_vae_that_picks_them():
    """The shipped toy (16x16x4 latents): an f4 VAE, a UNet that keeps the latent's shape, EchoReel
    sites at 8x8 and 4x4 as in the first (8x8) toy; the preset a stage builds is its VAE's."""
    from echoreel_core.echoreel.integration import integration_sites
    from echoreel_core.models.video_model import VideoModel
    from echoreel_core.toy.models import TOY_PRESETS, preset_for_vae

    assert TOY_PRESET is TOY_PRESETS[16] and sorted(TOY_PRESETS) == [8, 16]
    torch.manual_seed(0)
    model = VideoModel(TOY_PRESET).eval()
    video = torch.rand(1, 3, 2, 64, 64) * 2 - 1  # (b, c, t, h, w)
    with torch.no_grad():
        latents = model.vae.encode_video(video, generator=torch.Generator().manual_seed(0))
        assert latents.shape == (1, 4, 2, 16, 16) and model.vae.downscale_factor == 4
        eps = model.unet(latents, torch.tensor([500]), torch.zeros(1, 77, 64), fps=torch.tensor([8]))
    assert eps.shape == latents.shape and torch.isfinite(eps).all()
    sites = integration_sites(model.unet)  # no attention at 16x16
    assert len(sites) == len(integration_sites(VideoModel(TOY_PRESETS[8]).unet))
    for side, preset in TOY_PRESETS.items():
        assert preset_for_vae(replace(preset.vae, scale_factor=0.9)) is preset, side
    with pytest.raises(ValueError, match=r"no toy preset has a VAE of levels \(1, 2\)"):
        preset_for_vae(replace(TOY_PRESET.vae, ch_mult=(1, 2)))
