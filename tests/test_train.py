"""`python -m echoreel_core.train` on a tiny LVDM: real mp4 files, JSON, safetensors, torchrun.

Everything runs single-threaded (torch and subprocesses): on a shared 2-core machine tiny
models are many times faster that way, and CPU results are then reproducible across processes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from echoreel_core.loading.checkpoints import save_video_model
from echoreel_core.training.data import DatasetError, PairDataset, StreamSampler, VideoSpec, load_entries
from echoreel_core.echoreel.features import Reference, prism_tokens
from echoreel_core.echoreel.weights import load_echoreel, save_echoreel
from echoreel_core.common.files import WriteError, temporaries
from echoreel_core.models.video_model import VideoModel
from echoreel_core.models.presets import tiny_preset
from echoreel_core.train import main
from echoreel_core.training.config import ConfigError, key_help, load_config, preset_configs
from echoreel_core.training.loop import Trainer, train
from echoreel_core.training.state import LATEST, SLOW_SAVE_ENV, load_checkpoint, resolve_checkpoint
from echoreel_core.video_io import probe_video, write_video
from write_failures import file_size_limit

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_ECHOREEL = ["echoreel.prism.layers=1", "echoreel.prism.latent_dim=32", "echoreel.prism.heads=2",
                 "echoreel.prism.head_dim=16", "echoreel.prism.latent_text_dim=32"]
# 16x16 px clips -> 8x8 latents (the tiny VAE downscales by 2); 4 frames with stride 2 need 7
CLIPS = ["data.frames=4", "data.stride=2", "data.height=16", "data.width=16", "data.num_workers=0"]


def tiny_video(path: pathlib.Path, frames: int, seed: int) -> pathlib.Path:
    """A moving bright square on a noisy background, written with PyAV."""
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(frames, 16, 16, 3, generator=g) * 0.3
    for i in range(frames):
        video[i, 4:10, (i + seed) % 10 : (i + seed) % 10 + 6] = 1.0
    return pathlib.Path(write_video(path, video, fps=8))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny LVDM base model file and a JSON of 4 (target, reference) pairs of real mp4 files."""
    root = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    model = VideoModel(tiny_preset("lvdm-short-t2v")).eval()
    for p in model.unet.parameters():  # the zero-initialised output conv would hide every gradient
        p.data.normal_(0, 0.05)
    save_video_model(model, root / "base.safetensors")
    (root / "videos").mkdir()
    entries = []
    for i in range(4):
        tiny_video(root / "videos" / f"target{i}.mp4", 8, seed=i)
        tiny_video(root / "videos" / f"reference{i}.mp4", 8, seed=10 + i)
        entries.append({"input_text": f"a red square moving {i}", "gt_video_path": f"videos/target{i}.mp4",
                        "inject_text": f"a white square moving {i}", "inject_video_path": f"videos/reference{i}.mp4"})
    (root / "data.json").write_text(json.dumps(entries))
    (root / "two.json").write_text(json.dumps(entries[:2]))
    return root


def overrides(world: pathlib.Path, out: pathlib.Path, *extra: str, data: str = "data.json") -> list[str]:
    return [f"model.checkpoint={world / 'base.safetensors'}", f"data.json={world / data}", f"train.output_dir={out}",
            "train.batch_size=2", "train.max_steps=2", "validation.every=0", *CLIPS, *TINY_ECHOREEL, *extra]


def echoreel_params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.echoreel.state_dict().items()}


# ---- configuration --------------------------------------------------------------------------------

def test_presets_and_overrides_load_and_help_lists_the_keys(capsys, tmp_path):
    assert set(preset_configs()) == {"lvdm", "videocrafter2", "videocrafter1_t2v", "videocrafter1_i2v", "toy",
                                     "toy_i2v"}
    toy, toy_i2v = load_config("toy"), load_config("toy_i2v")  # the toy models' own settings
    assert toy.train.timesteps == [600, 1000] and toy.echoreel.query_positions and toy.train.max_steps == 3000
    assert toy_i2v.echoreel.prism == toy.echoreel.prism and toy_i2v.model.expect == "videocrafter1-i2v-toy"
    for name in set(preset_configs()) - {"toy", "toy_i2v"}:  # the official hyper-parameters
        cfg = load_config(name, ["train.batch_size=1"])
        assert cfg.optim.lr == 1e-4 and list(cfg.optim.betas) == [0.9, 0.9] and cfg.optim.weight_decay == 0.03
        assert cfg.train.batch_size == 1 and cfg.data.frames == 16 and cfg.data.stride == 4
        assert not cfg.echoreel.query_positions and cfg.train.timesteps == [0, 1000]
    assert load_config("lvdm").train.batch_size == 6
    assert load_config("lvdm", ["echoreel.prism.layers=4"]).echoreel.prism.layers == 4
    custom = tmp_path / "mine.yaml"
    custom.write_text("train:\n  max_steps: 7\n")
    assert load_config(str(custom)).train.max_steps == 7
    with pytest.raises(ConfigError, match="train.bach_size"):
        load_config("lvdm", ["train.bach_size=2"])
    with pytest.raises(ConfigError, match="train.precision must be one of"):
        load_config(None, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config("nonsense")
    with pytest.raises(ConfigError, match=r"train.timesteps must be \[first, last\)"):
        load_config(None, ["train.timesteps=[500,400]"])
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for key in ("model.checkpoint", "data.json", "train.output_dir", "train.batch_size", "optim.lr", "optim.betas",
                "optim.weight_decay", "optim.warmup_steps", "optim.grad_clip", "train.precision",
                "train.gradient_checkpointing", "train.grad_accumulation", "train.max_steps", "train.save_every",
                "validation.every", "train.seed", "data.num_workers", "data.cache", "data.cache_dir", "data.frames",
                "data.stride", "data.height", "model.fps", "echoreel.prism", "echoreel.init"):
        assert f"  {key} [" in text, key
    assert key_help().count("\n") > 40


def test_help_shows_the_real_defaults(capsys):
    """1 == True and 0 == False in Python: counts of 1 and 0 must not be shown as true/false."""
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for shown in ("train.grad_accumulation [1]:", "train.log_every [1]:", "data.start [0]:", "optim.warmup_steps [0]:",
                  "validation.eta [1.0]:", "train.gradient_checkpointing [false]:", "data.cache [false]:",
                  "model.checkpoint [null]:", "train.precision [fp32]:", "--threads N", "train.timeout_s [300]:",
                  "train.check_memory [true]:", "optim.offload [false]:", "--estimate-memory"):
        assert shown in text, shown


# ---- data ----------------------------------------------------------------------------------------

def test_official_json_both_spellings_relative_paths_and_stream_sharding(world, tmp_path):
    items = json.loads((world / "data.json").read_text())
    items[1] = {"input_text": items[1]["input_text"], "gt_video_path": items[1]["gt_video_path"],
                "reference_text": "readme spelling", "reference_video_path": items[1]["inject_video_path"]}
    path = world / "spellings.json"
    path.write_text(json.dumps(items))
    entries, skips = load_entries(path)
    assert not skips and len(entries) == 4
    assert entries[1].caption == "readme spelling" and entries[1].reference == world / "videos/reference1.mp4"
    # the stream: each epoch is a permutation; 2 ranks x batch 1 read what 1 rank x batch 2 reads
    dataset = PairDataset(entries, VideoSpec(4, 2, 0, 16, 16), seed=3)
    assert sorted(dataset.entry_at(p) for p in range(4)) == [0, 1, 2, 3]
    assert sorted(dataset.entry_at(p) for p in range(4, 8)) == [0, 1, 2, 3]
    one = list(StreamSampler(2, 0, 1, start=2, micro_steps=2))
    two = [list(StreamSampler(1, r, 2, start=2, micro_steps=2)) for r in range(2)]
    assert one == [2, 3, 4, 5] and two == [[2, 4], [3, 5]]
    sample = dataset[0]
    assert sample.target.pixels.shape == (3, 4, 16, 16) and -1 <= sample.target.pixels.min()


def test_posterior_is_the_official_sample_and_batched_prism_is_per_sample(world, tmp_path):
    trainer = Trainer(load_config(None, overrides(world, tmp_path)))
    sample = trainer.dataset[0]
    mean, logvar = trainer.batches.moments(sample.target)
    ours = trainer.batches.posterior_sample(mean, logvar, torch.Generator().manual_seed(5))
    official = trainer.model.vae.encode_video(sample.target.pixels[None], generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, official[0], rtol=0, atol=1e-6)
    # the training forward's batched Prism call = prism_tokens per sample, each with its own reference
    echoreel = trainer.echoreel
    g = torch.Generator().manual_seed(0)
    prompt, caption = torch.randn(2, 2, 77, 64, generator=g)
    latents = torch.randn(2, 4, 4, 8, 8, generator=g)
    batched = echoreel.video_inject_process(torch.cat([prompt, caption], dim=1), latents)
    singles = torch.cat([prism_tokens(echoreel, prompt[i : i + 1], [Reference(latents[i : i + 1], caption[i : i + 1])])
                         for i in range(2)])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-6)


# ---- training ----------------------------------------------------------------------------------

def test_training_timesteps_are_drawn_from_the_configured_range(world, tmp_path):
    trainer = Trainer(load_config(None, overrides(world, tmp_path, "train.timesteps=[700,710]")))
    drawn = torch.cat([trainer.batches.prepare([trainer.dataset[p] for p in range(4)])["timesteps"] for _ in range(3)])
    assert int(drawn.min()) >= 700 and int(drawn.max()) < 710


def test_position_aware_queries_come_from_the_config_and_must_match_init_weights(world, tmp_path):
    trainer = Trainer(load_config(None, overrides(world, tmp_path / "a", "echoreel.query_positions=true")))
    assert trainer.echoreel.config.query_positions
    assert trainer.fit().step == 2  # after the memory check's fake step: its position code was not kept
    init = save_echoreel(trainer.echoreel, tmp_path / "init.safetensors")
    with pytest.raises(ConfigError, match="these weights have query_positions=True, the config says False"):
        Trainer(load_config(None, overrides(world, tmp_path / "b", f"echoreel.init={init}")))


def test_training_reduces_the_loss_and_changes_only_echoreel(world, tmp_path):
    cfg = load_config(None, overrides(world, tmp_path, "train.max_steps=8", "optim.lr=3e-3", "train.save_every=100",
                                      data="two.json"))
    trainer = Trainer(cfg)
    base_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    echoreel_before = echoreel_params(trainer)
    fixed = [0, 1]  # both entries, with the noise and timesteps of these stream positions
    before = trainer.evaluate(fixed)
    result = trainer.fit()
    after = trainer.evaluate(fixed)
    assert result.step == 8 and after < before - 1e-3, (before, after)
    base_after = trainer.model.state_dict()
    assert all(torch.equal(base_after[k], v) for k, v in base_before.items())  # the base is bit-identical
    changed = {k for k, v in trainer.echoreel.state_dict().items() if not torch.equal(v, echoreel_before[k])}
    assert any(k.startswith("video_inject_process.") for k in changed)
    assert any(".video_inject_attn3_tmp.to_out" in k for k in changed)
    dead = ("latent_to_S.", ".video_inject_attn3.", ".video_inject_norm6.")  # official, never computed: frozen
    assert not any(part in k for k in changed for part in dead)
    assert not any(block.action_integration for block in trainer.model.unet.modules()
                   if hasattr(block, "action_integration"))  # detached after training
    # outputs: the ComfyUI-loadable export, the CSV log, the resolved config
    exported = load_echoreel(tmp_path / "echoreel.safetensors")
    for key, value in trainer.echoreel.official_state_dict().items():
        assert torch.equal(exported.official_state_dict()[key], value), key
    rows = (tmp_path / "train_log.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,grad_norm,samples_per_s,skipped" and len(rows) == 9
    assert (tmp_path / "config.yaml").is_file()


def test_resume_continues_bit_identically(world, tmp_path):
    extra = ["train.max_steps=4", "train.grad_accumulation=2", "train.batch_size=1", "optim.warmup_steps=3",
             "optim.grad_clip=0.01", "optim.lr=1e-3", "data.num_workers=1", "train.save_every=2"]
    straight = Trainer(load_config(None, overrides(world, tmp_path / "straight", *extra)))
    straight.fit()
    first = Trainer(load_config(None, overrides(world, tmp_path / "resumed", *extra, "train.max_steps=2")))
    first.fit()
    assert resolve_checkpoint("latest", tmp_path / "resumed" / "checkpoints").name == "step_00000002.pt"
    second = Trainer(load_config(None, overrides(world, tmp_path / "resumed", *extra, "train.resume=latest")))
    assert second.step == 2
    second.fit()
    for key, value in echoreel_params(straight).items():
        assert torch.equal(second.echoreel.state_dict()[key], value), key
    a, b = straight.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)
    assert straight.scheduler.get_last_lr() == second.scheduler.get_last_lr()
    log = (tmp_path / "resumed" / "train_log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2", "3", "4"]


def test_the_saved_config_resumes_from_another_working_directory(world, tmp_path, monkeypatch):
    """Relative paths become absolute when the config loads, so the run's config.yaml names the same
    files from anywhere: `--config ../first/runs/x/config.yaml --resume latest` continues the run."""
    from omegaconf import OmegaConf

    first, other = tmp_path / "first", tmp_path / "other"
    first.mkdir()
    other.mkdir()
    monkeypatch.chdir(first)
    relative = [f"model.checkpoint={os.path.relpath(world / 'base.safetensors')}",
                f"data.json={os.path.relpath(world / 'data.json')}", "train.output_dir=runs/x",
                "train.batch_size=2", "train.max_steps=2", "validation.every=0", *CLIPS, *TINY_ECHOREEL]
    Trainer(load_config(None, relative)).fit()
    saved = OmegaConf.load(first / "runs" / "x" / "config.yaml")
    assert saved.model.checkpoint == str(world / "base.safetensors") and saved.data.json == str(world / "data.json")
    assert saved.train.output_dir == str(first / "runs" / "x")
    monkeypatch.chdir(other)
    resumed = Trainer(load_config(os.path.relpath(first / "runs" / "x" / "config.yaml"),
                                  ["train.resume=latest", "train.max_steps=4"]))
    assert resumed.step == 2
    resumed.fit()
    assert load_checkpoint(resolve_checkpoint("latest", first / "runs" / "x" / "checkpoints"))["step"] == 4
    assert os.listdir(other) == []


def test_a_failed_write_is_one_line_and_keeps_the_last_good_checkpoint(world, tmp_path):
    out = tmp_path / "run"
    Trainer(load_config(None, overrides(world, out, "train.max_steps=1"))).fit()
    kept = {path: path.read_bytes() for path in (out / "checkpoints" / "step_00000001.pt",
                                                 out / "checkpoints" / LATEST, out / "echoreel.safetensors")}
    with file_size_limit(64 * 1024):  # config.yaml and the log fit, a checkpoint does not
        run = subprocess.run([sys.executable, "-m", "echoreel_core.train", *overrides(world, out, "train.max_steps=2"),
                              "--resume", "latest"], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                             timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    failed = out / "checkpoints" / "step_00000002.pt"
    assert run.stderr.splitlines()[-1].endswith(f" ERROR [rank 0] cannot write {failed}: File too large")
    assert {path: path.read_bytes() for path in kept} == kept
    assert temporaries(out) == temporaries(out / "checkpoints") == []
    # an output folder that cannot be made: here, under a file
    blocker = tmp_path / "a file"
    blocker.write_text("")
    with pytest.raises(WriteError, match=f"^cannot write {re.escape(str(blocker / 'run'))}: Not a directory$"):
        Trainer(load_config(None, overrides(world, blocker / "run")))


def test_gradient_checkpointing_and_caches_keep_the_numbers(world, tmp_path):
    def run(name, *extra):
        trainer = Trainer(load_config(None, overrides(world, tmp_path / name, "optim.lr=1e-3", *extra)))
        encodes = []
        handle = trainer.model.vae.encoder.register_forward_hook(lambda *args: encodes.append(1))
        trainer.fit()
        handle.remove()
        return echoreel_params(trainer), len(encodes)

    plain, plain_encodes = run("plain")
    checkpointed, _ = run("checkpointed", "train.gradient_checkpointing=true")
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    filling, filling_encodes = run("filling", "data.cache=true", cache)
    cached, cached_encodes = run("cached", "data.cache=true", cache)
    assert plain_encodes == filling_encodes == 8 and cached_encodes == 0  # 2 steps x 2 samples x 2 videos
    assert len(list((tmp_path / "cache" / "video").rglob("*.safetensors"))) == 8
    assert len(list((tmp_path / "cache" / "text").rglob("*.safetensors"))) == 8
    for key, value in plain.items():
        assert torch.equal(checkpointed[key], value), key
        assert torch.equal(filling[key], value), key
        assert torch.equal(cached[key], value), key


def test_validation_writes_reference_without_and_with_side_by_side(world, tmp_path):
    train(load_config(None, overrides(world, tmp_path, "train.max_steps=1", "validation.every=1", "validation.steps=2",
                                      "validation.num_samples=1", "validation.format=mp4")))
    info = probe_video(tmp_path / "validation" / "step_00000001_0.mp4")
    assert (info.frame_count, info.height, info.width) == (4, 16, 48)


def test_i2v_trains_on_the_target_first_frame_and_validates(tmp_path):
    torch.manual_seed(0)
    model = VideoModel(tiny_preset("videocrafter1-i2v-512")).eval()
    for p in model.unet.parameters():
        p.data.normal_(0, 0.05)
    tiny_video(tmp_path / "t.mp4", 8, 1)
    tiny_video(tmp_path / "r.mp4", 8, 2)
    (tmp_path / "d.json").write_text(json.dumps([{"input_text": "a square", "gt_video_path": "t.mp4",
                                                  "inject_text": "a square", "inject_video_path": "r.mp4"}]))
    cfg = load_config("videocrafter1_i2v", [f"data.json={tmp_path / 'd.json'}", f"train.output_dir={tmp_path / 'out'}",
                                            "train.batch_size=1", "train.max_steps=1", "train.precision=fp32",
                                            "train.gradient_checkpointing=false", "validation.every=1",
                                            "validation.steps=1", "validation.num_samples=1", *CLIPS, *TINY_ECHOREEL])
    trainer = Trainer(cfg, model=model)
    batch = trainer.batches.prepare([trainer.dataset[0]])
    assert batch["context"].shape == (1, 77 + 4, 64) and batch["fps"].tolist() == [8]  # text + image tokens
    result = trainer.fit()
    assert result.step == 1 and (tmp_path / "out" / "validation" / "step_00000001_0.mp4").is_file()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_autocast_runs(world, tmp_path, precision):
    result = train(load_config(None, overrides(world, tmp_path, "train.max_steps=1", "train.batch_size=1",
                                                f"train.precision={precision}")))
    assert result.step == 1 and math.isfinite(result.loss)
    state = load_checkpoint(resolve_checkpoint("latest", tmp_path / "checkpoints"))
    assert state["scaler"] == {} if precision == "bf16" else state["scaler"]["scale"] == 2.0**16  # fp16: a GradScaler


# ---- bad data ----------------------------------------------------------------------------------

def test_bad_data_is_reported_skipped_and_counted(world, tmp_path, caplog):
    (tmp_path / "corrupt.mp4").write_bytes(random.Random(345).randbytes(2000))  # seeded: a failure replays
    tiny_video(tmp_path / "short_target.mp4", 2, 3)
    tiny_video(tmp_path / "short_reference.mp4", 3, 4)
    good = {"input_text": "a square", "gt_video_path": str(world / "videos/target0.mp4"),
            "inject_text": "a square", "inject_video_path": str(world / "videos/reference0.mp4")}
    items = [
        good,
        {**good, "gt_video_path": "missing.mp4"},  # 1
        {**good, "inject_video_path": "corrupt.mp4"},  # 2: found when loaded
        {**good, "input_text": "  "},  # 3
        {"prompt": "a square", "video": "x.mp4"},  # 4
        "not an object",  # 5
        {**good, "gt_video_path": "short_target.mp4"},  # 6: 2 frames < 4: skipped as official
        {**good, "inject_video_path": "short_reference.mp4"},  # 7: 3 of 7 frames: last one repeated
    ]
    (tmp_path / "bad.json").write_text(json.dumps(items))
    caplog.set_level(logging.INFO)
    result = train(load_config(None, [f"model.checkpoint={world / 'base.safetensors'}", f"data.json={tmp_path / 'bad.json'}",
                                      f"train.output_dir={tmp_path / 'out'}", "train.batch_size=2", "train.max_steps=2",
                                      "validation.every=0", *CLIPS, *TINY_ECHOREEL]))
    text = caplog.text
    assert f"entry 1 ({tmp_path / 'missing.mp4'}): no such file; skipped" in text
    assert f"entry 2 ({tmp_path / 'corrupt.mp4'}): not a readable video" in text
    assert "entry 3 (" in text and "`input_text` is empty or not text" in text
    assert "entry 4 (" in text and "lacks input_text, gt_video_path, inject_text or reference_text" in text
    assert "entry 5 (" in text and "is a str, not an object" in text
    assert f"entry 6 ({tmp_path / 'short_target.mp4'}): the target has 2 frames, fewer than 4" in text
    assert "short_reference.mp4: asked for 4 frames with stride 2" in text and "repeating the last frame" in text
    assert result.step == 2 and sorted(result.skipped) == [1, 2, 3, 4, 5, 6]
    assert "skipped 6 of 8 entries (1 empty caption, 1 missing file, 1 short video, 1 unreadable video, 2 wrong keys)" in text


def test_unusable_json_is_a_clear_fatal_error(world, tmp_path, caplog):
    (tmp_path / "dict.json").write_text('{"input_text": "x"}')
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(DatasetError, match="must be a list of entries"):
        load_entries(tmp_path / "dict.json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_entries(tmp_path / "broken.json")
    with pytest.raises(DatasetError, match="cannot read the dataset JSON"):
        load_entries(tmp_path / "absent.json")
    (tmp_path / "none.json").write_text('[{"input_text": ""}]')
    assert main(["--threads", "1",  # the suite's count (conftest.py)
                 f"model.checkpoint={world / 'base.safetensors'}", f"data.json={tmp_path / 'none.json'}",
                 f"train.output_dir={tmp_path / 'out'}", *CLIPS]) == 2
    assert "no usable entry (1 skipped)" in caplog.text


# ---- processes ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def test_torchrun_two_processes_equal_one_process_with_the_combined_batch(world, tmp_path):
    # Adam divides each gradient entry by its own magnitude, which blows the fp32 rounding of
    # near-zero entries up to the size of lr; a large eps makes the update linear in such small
    # gradients, so this compares the all-reduced gradients rather than Adam's amplification.
    common = ["optim.lr=0.1", "optim.eps=1e-3", "train.max_steps=2", "train.save_every=100"]
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "-m", "echoreel_core.train",
         *overrides(world, tmp_path / "ddp", *common, "train.batch_size=1")],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[rank 0]" in run.stderr and "global batch 2" in run.stderr
    single = Trainer(load_config(None, overrides(world, tmp_path / "single", *common, "train.batch_size=2")))
    initial = single.echoreel.official_state_dict()
    initial = {k: v.clone() for k, v in initial.items()}
    single.fit()
    ddp = load_file(str(tmp_path / "ddp" / "echoreel.safetensors"))
    ours = single.echoreel.official_state_dict()
    assert ddp.keys() == ours.keys()
    for key, value in ours.items():
        torch.testing.assert_close(ddp[key], value, rtol=0, atol=1e-6, msg=key)
    moved = (ours["video_inject_process.net.0.attn1.to_q.weight"] - initial["video_inject_process.net.0.attn1.to_q.weight"])
    assert moved.abs().max() > 1e-4  # a real update, far above the tolerance
    # the logged (all-reduced) losses and gradient norms are those of the combined batch
    rows = [[line.split(",") for line in (tmp_path / name / "train_log.csv").read_text().splitlines()[1:]]
            for name in ("ddp", "single")]
    for a, b in zip(*rows):
        assert abs(float(a[1]) - float(b[1])) < 1e-5 and abs(float(a[3]) / float(b[3]) - 1) < 1e-4
    state = load_checkpoint(resolve_checkpoint("latest", tmp_path / "ddp" / "checkpoints"))
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 2


def wait_for(proc: subprocess.Popen, log_path: pathlib.Path, text: str, count: int) -> float:
    """Poll the log until `text` occurs `count` times; returns the time it did."""
    deadline = time.monotonic() + 120
    while log_path.read_text().count(text) < count:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.01)
    return time.monotonic()


def test_killing_the_process_during_saves_never_breaks_latest(world, tmp_path):
    """SIGKILL a training subprocess in the middle of saves, several times, then resume.

    Each save is stretched to about a second by the SLOW_SAVE test hook (a sleep after every
    write() of the checkpoint file), so a kill lands inside the write, the rename or the pointer
    update rather than in the (much longer) process start. Every round lets one save complete
    (progress), times it, and kills the next one at a random point within that duration.
    `latest` must always load with weights_only=True, and the run resumed after all the kills
    must end with exactly the parameters of an uninterrupted run."""
    from omegaconf import OmegaConf

    out, config, steps = tmp_path / "killed", tmp_path / "cfg.yaml", 6
    OmegaConf.save(load_config(None, overrides(world, out, f"train.max_steps={steps}", "train.save_every=1",
                                               "optim.lr=1e-3")), config)
    command = [sys.executable, "-m", "echoreel_core.train", "--config", str(config), "--resume", "auto"]
    rng = random.Random(0)
    seen = []
    for attempt in range(3):
        log_path = tmp_path / f"log{attempt}.txt"
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(command, cwd=ROOT, env=subprocess_env(**{SLOW_SAVE_ENV: "0.0003"}),
                                    stdout=log_file, stderr=subprocess.STDOUT)
            began = wait_for(proc, log_path, "saving checkpoint", 1)
            duration = wait_for(proc, log_path, "INFO [rank 0] saved ", 1) - began
            wait_for(proc, log_path, "saving checkpoint", 2)
            time.sleep(rng.uniform(0.0, duration))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, log_path.read_text()[-2000:]
        latest = resolve_checkpoint("latest", out / "checkpoints")
        state = load_checkpoint(latest)  # weights_only=True inside
        assert latest.name == f"step_{state['step']:08d}.pt" and state["step"] >= 1
        seen.append(state["step"])
    assert seen == sorted(seen) and seen[-1] < steps
    finished = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints'}" in finished.stderr and f"done at step {steps}" in finished.stderr
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    straight = Trainer(load_config(None, overrides(world, tmp_path / "straight", f"train.max_steps={steps}",
                                                   "train.save_every=100", "optim.lr=1e-3")))
    straight.fit()
    resumed = load_file(str(out / "echoreel.safetensors"))
    for key, value in straight.echoreel.official_state_dict().items():
        assert torch.equal(resumed[key], value), key
