"""Official checkpoint layouts, detection, conversion to safetensors, and bad files."""

from __future__ import annotations

import io
import json
import os
import pathlib
import random
import subprocess
import sys
import zipfile

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from echoreel_core.loading.checkpoints import CheckpointError, code_request, load_video_model, read_state_dict
from echoreel_core.echoreel.weights import load_echoreel
from echoreel_core.models.video_model import VideoModel, component_prefixes
from echoreel_core.models.presets import tiny_preset

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCHEDULE_BUFFERS = [
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
]


def official_state_dict(name: str, dtype=torch.float32) -> tuple[VideoModel, dict[str, torch.Tensor]]:
    """A tiny random model and the state dict the official LatentDiffusion would save for it."""
    torch.manual_seed(0)
    model = VideoModel(tiny_preset(name))
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    state = {}
    for attribute, prefix in component_prefixes(model.preset).items():
        state.update({prefix + k: v.to(dtype) for k, v in getattr(model, attribute).state_dict().items()})
    for buffer in SCHEDULE_BUFFERS:
        state[buffer] = torch.rand(1000).to(dtype)
    state["alphas_cumprod"] = model.schedule.alphas_cumprod.to(dtype)
    if model.schedule.scale_arr is not None:
        state["scale_arr"] = model.schedule.scale_arr.to(dtype)
    if model.preset.family == "lvdm":
        state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    if model.preset.is_i2v:  # the text tower OpenCLIP's image embedder keeps
        width = model.preset.resampler.embedding_dim
        state["embedder.model.token_embedding.weight"] = torch.randn(10, width).to(dtype)
        state["embedder.model.logit_scale"] = torch.ones([]).to(dtype)
    return model, state


def assert_weights_equal(model: VideoModel, state: dict[str, torch.Tensor], dtype=None):
    for attribute, prefix in component_prefixes(model.preset).items():
        for key, value in getattr(model, attribute).state_dict().items():
            expected = state[prefix + key]
            assert torch.equal(value, expected.to(dtype) if dtype else expected), prefix + key


@pytest.mark.parametrize("name", ["videocrafter2-t2v-512", "videocrafter1-i2v-512", "lvdm-short-t2v"])
def test_lightning_checkpoint_loads_with_detected_config(tmp_path, name):
    source, state = official_state_dict(name)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.9.5"}, path)
    model = load_video_model(path)
    assert model.preset.family == source.preset.family
    assert model.preset.unet == source.preset.unet
    assert model.preset.text == source.preset.text and model.preset.vae == source.preset.vae
    assert model.preset.resampler == source.preset.resampler and model.preset.vision == source.preset.vision
    assert_weights_equal(model, state)


def test_deepspeed_fp16_checkpoint_keeps_stored_schedule(tmp_path):
    _, state = official_state_dict("videocrafter1-i2v-512", dtype=torch.float16)
    path = tmp_path / "checkpoint.pt"
    module = {"_forward_module." + k: v for k, v in state.items()}
    torch.save({"module": module, "buffer_names": list(state)[:3], "global_steps": 5, "ds_version": "0.9.5",
                "param_shapes": [{"a": torch.Size([2, 3])}], "sparse_tensor_module_names": set()}, path)
    model = load_video_model(path)
    assert model.dtype == torch.float32
    assert_weights_equal(model, state, dtype=torch.float32)
    # fp16-rounded abar and s_t are used as stored (0.7 -> 0.7001953)
    assert torch.equal(model.schedule.alphas_cumprod, state["alphas_cumprod"].float())
    assert model.schedule.scale_arr[999].item() == pytest.approx(0.7001953, abs=1e-7)


def run_convert(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "echoreel_core.convert", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("dtype", [None, "fp16", "bf16"])
def test_convert_writes_safetensors_that_load_back_bit_identical(tmp_path, dtype):
    _, state = official_state_dict("videocrafter2-t2v-512")
    ckpt, out = tmp_path / "model.ckpt", tmp_path / "model.safetensors"
    torch.save({"state_dict": state}, ckpt)
    result = run_convert(ckpt, out, *(["--dtype", dtype] if dtype else []))
    assert result.returncode == 0, result.stderr
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["family"] == "videocrafter" and meta["dtype"] == (dtype or "fp32")
    assert meta["preset_name"] == "videocrafter2-t2v-512-custom"
    torch_dtype = {None: torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    reloaded = load_video_model(out, dtype=None)
    assert reloaded.dtype == torch_dtype
    assert_weights_equal(reloaded, state, dtype=torch_dtype)
    assert torch.equal(reloaded.schedule.scale_arr, state["scale_arr"])  # the schedule stays float32
    # converting our own file again changes nothing
    again = tmp_path / "again.safetensors"
    assert run_convert(out, again).returncode == 0
    assert_weights_equal(load_video_model(again, dtype=None), state, dtype=torch_dtype)


def test_strict_errors_name_the_file_and_list_keys(tmp_path):
    _, state = official_state_dict("videocrafter2-t2v-512")
    missing = dict(state)
    del missing["model.diffusion_model.input_blocks.1.0.out_layers.3.bias"]
    extra = dict(state, **{"model.diffusion_model.surprise.weight": torch.zeros(1)})
    wrong = dict(state, **{"first_stage_model.quant_conv.bias": torch.zeros(3)})
    for label, variant, pattern in (
        ("missing", missing, r"1 missing: model\.diffusion_model\.input_blocks\.1\.0\.out_layers\.3\.bias"),
        ("extra", extra, r"1 unexpected: model\.diffusion_model\.surprise\.weight"),
        ("wrong", wrong, r"1 wrong shape: first_stage_model\.quant_conv\.bias \(expected \(8,\), found \(3,\)\)"),
    ):
        path = tmp_path / f"{label}.ckpt"
        torch.save({"state_dict": variant}, path)
        with pytest.raises(CheckpointError, match=pattern) as error:
            load_video_model(path)
        assert str(path) in str(error.value)


def small_checkpoint_bytes() -> dict[str, bytes]:
    """One small valid file per format (zip pickle, legacy pickle, safetensors): what gets damaged."""
    g = torch.Generator().manual_seed(0)
    tensors = {f"model.diffusion_model.w{i}": torch.randn(4, 3, generator=g) for i in range(3)}
    zipped, legacy = io.BytesIO(), io.BytesIO()
    torch.save({"state_dict": tensors, "epoch": 1}, zipped)
    torch.save({"state_dict": tensors}, legacy, _use_new_zipfile_serialization=False)
    return {"zip": zipped.getvalue(), "legacy": legacy.getvalue(),
            "safetensors": safetensors_bytes(tensors, metadata={"format": "echoreel.video_model"})}


def zip_cut_points(data: bytes) -> set[int]:
    """Every boundary of the zip's structure, and one byte either side: each local header, each
    entry's data, the central directory and its end record."""
    points = set()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
            points |= {info.header_offset, data_start, data_start + info.compress_size // 2,
                       data_start + info.compress_size}
        central = data.rfind(b"PK\x01\x02", 0, len(data))
        end_record = data.rfind(b"PK\x05\x06")
        points |= {data.find(b"PK\x01\x02"), central, end_record, end_record + 12, len(data) - 1}
    return {q for p in points for q in (p - 1, p, p + 1) if 0 <= q < len(data)}


def safetensors_cut_points(data: bytes) -> set[int]:
    """In the 8-byte length, inside the JSON header, at its end, and at every tensor's first,
    middle and last byte."""
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    points = set(range(0, 9)) | {8 + header_len // 2, 8 + header_len - 1, 8 + header_len}
    for key, entry in header.items():
        if key != "__metadata__":
            start, end = (8 + header_len + o for o in entry["data_offsets"])
            points |= {start, (start + end) // 2, end - 1}
    return {p for p in points if p < len(data)}


def bad_checkpoint_files() -> list[tuple[str, str, bytes]]:
    """(label, suffix, bytes): seeded random bytes (plain, behind a zip or pickle signature, behind a
    valid safetensors header length), every class of truncation point of each format, zips with a
    wrong payload, an empty file."""
    rng = random.Random(20261203)
    good = small_checkpoint_bytes()
    files = [("empty", suffix, b"") for suffix in (".ckpt", ".pt", ".safetensors")]
    for i in range(60):
        noise = rng.randbytes(rng.randrange(1, 4096))
        files += [(f"random-{i}", ".ckpt", noise), (f"zip-signature-{i}", ".ckpt", b"PK\x03\x04" + noise),
                  (f"pickle-signature-{i}", ".pt", b"\x80\x02" + noise),
                  (f"random-{i}", ".safetensors", noise),
                  (f"safetensors-length-{i}", ".safetensors", len(noise).to_bytes(8, "little") + noise)]
    cuts = {"zip": zip_cut_points(good["zip"]) | {rng.randrange(len(good["zip"])) for _ in range(20)},
            "legacy": set(range(0, len(good["legacy"]), 13)),
            "safetensors": safetensors_cut_points(good["safetensors"])}
    for kind, points in cuts.items():
        suffix = ".safetensors" if kind == "safetensors" else ".ckpt"
        files += [(f"{kind}-cut-at-{p}", suffix, good[kind][:p]) for p in sorted(points)]
    wrong = io.BytesIO()
    with zipfile.ZipFile(wrong, "w") as archive:
        archive.writestr("readme.txt", "not a checkpoint")
    files.append(("zip-of-text", ".ckpt", wrong.getvalue()))
    with zipfile.ZipFile(io.BytesIO(good["zip"])) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    for label, change in (("pickle-replaced", lambda name: name.endswith("data.pkl")),
                          ("tensor-data-missing", lambda name: "/data/" in name)):
        damaged = io.BytesIO()
        with zipfile.ZipFile(damaged, "w") as archive:
            for name, content in entries.items():
                if not change(name):
                    archive.writestr(name, content)
                elif label == "pickle-replaced":
                    archive.writestr(name, rng.randbytes(200))
        files.append((label, ".ckpt", damaged.getvalue()))
    list_payload = io.BytesIO()
    torch.save([torch.zeros(2)], list_payload)
    files.append(("list-not-dict", ".ckpt", list_payload.getvalue()))
    return files


FUZZ_FILES = 517


def test_seeded_fuzz_517_unreadable_files_all_give_checkpoint_errors(tmp_path):
    """Whatever the bytes, the loaders end in CheckpointError naming the file (never a raw
    IndexError/KeyError from the unpickler). Seeded: a failure reproduces."""
    files = bad_checkpoint_files()
    assert len(files) == FUZZ_FILES
    failures = []
    for index, (label, suffix, data) in enumerate(files):
        path = tmp_path / f"{index}-{label}{suffix}"
        path.write_bytes(data)
        for load in (load_video_model, load_echoreel) if index % 5 == 0 else (load_video_model,):
            try:
                load(path)
                failures.append(f"{label}: loaded")
            except CheckpointError as error:
                if str(path) not in str(error):
                    failures.append(f"{label}: the message does not name the file: {error}")
            except Exception as error:  # noqa: BLE001 - what the test looks for
                failures.append(f"{label}: {type(error).__name__}: {error}")
        path.unlink()
    print(f"fuzzed {len(files)} files")
    assert not failures, failures[:10]


def test_missing_and_unreadable_paths(tmp_path):
    for path, pattern in ((tmp_path / "absent.ckpt", "no such file"), (tmp_path, "not a file")):
        with pytest.raises(CheckpointError, match=pattern) as error:
            load_video_model(path)
        assert str(path) in str(error.value)
    truncated = tmp_path / "model.safetensors"
    truncated.write_bytes(small_checkpoint_bytes()["safetensors"][:100])
    with pytest.raises(CheckpointError, match="not a readable safetensors file .*truncated or corrupt"):
        load_video_model(truncated)


def test_image_model_is_not_taken_for_a_video_model(tmp_path):
    """An SD-1.5-style checkpoint: the same UNet prefix, no temporal layers."""
    prefix = "model.diffusion_model."
    state = {
        prefix + "input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
        prefix + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": torch.zeros(320, 320),
        prefix + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 768),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(49408, 768),
    }
    path = tmp_path / "v1-5-pruned.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="image model such as Stable Diffusion") as error:
        load_video_model(path)
    assert str(path) in str(error.value)
    no_unet = tmp_path / "vae.ckpt"
    torch.save({"state_dict": {"first_stage_model.encoder.conv_in.weight": torch.zeros(1)}}, no_unet)
    with pytest.raises(CheckpointError, match="not a VideoCrafter or LVDM checkpoint"):
        load_video_model(no_unet)
    _, incomplete = official_state_dict("videocrafter2-t2v-512")
    del incomplete["model.diffusion_model.out.2.weight"]
    torch.save({"state_dict": incomplete}, tmp_path / "incomplete.ckpt")
    with pytest.raises(CheckpointError, match="looks like videocrafter2-t2v-512 but lacks 'out.2.weight'"):
        load_video_model(tmp_path / "incomplete.ckpt")


class Payload:
    """Unpickling this object would create a marker file: the loader must never do it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    _, state = official_state_dict("videocrafter2-t2v-512")
    marker = tmp_path / "pwned"
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": state, "callbacks": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refused: the file asks to run code \(getattr\)") as error:
        load_video_model(path)
    assert str(path) in str(error.value)
    assert not marker.exists()


class SystemCall:
    """A pickle that would run a shell command: torch blocks `os`/`posix` by module."""

    def __reduce__(self):
        return (os.system, ("true",))


def test_every_wording_of_a_code_refusal_is_recognised(tmp_path):
    """torch words a refused import in several ways; each one names what the file asked to run."""
    path = tmp_path / "system.pt"
    torch.save({"a": torch.zeros(1), "b": SystemCall()}, path)
    with pytest.raises(CheckpointError, match=rf"refused: the file asks to run code \({os.name == 'nt' and 'nt' or 'posix'}\.system\)"):
        read_state_dict(path)
    for message, request in (
        ("Weights only load failed... WeightsUnpickler error: Unsupported global: GLOBAL argparse.Namespace was not "
         "an allowed global by default. Please use ...", "argparse.Namespace"),
        ("WeightsUnpickler error: Trying to load unsupported GLOBAL posix.system whose module posix is blocked.",
         "posix.system"),
        ("WeightsUnpickler error: Trying to call reduce for unrecognized function <built-in function eval> which "
         "belongs to <module 'builtins'>", "built-in function eval"),
        ("Can only create new object for nn.Parameter or classes allowlisted via `add_safe_globals` but got "
         "<class 'collections.OrderedDict'>", "class 'collections.OrderedDict'"),
        ("WeightsUnpickler error: Unsupported operand 149", None),
        ("pop from empty list", None),
    ):
        assert code_request(message) == request, message


def test_loaded_model_is_in_eval_mode_and_samples_deterministically(tmp_path):
    """VideoCrafter2's temporal convolutions hold dropout: a model left in training mode would
    give a different video for the same seed on every run (found on the toy model)."""
    from echoreel_core.loading.checkpoints import save_video_model
    from echoreel_core.echoreel.weights import EchoReel, EchoReelConfig, load_echoreel, save_echoreel

    torch.manual_seed(0)
    model = VideoModel(tiny_preset("videocrafter2-t2v-512"))
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    save_video_model(model, tmp_path / "model.safetensors")
    loaded = load_video_model(tmp_path / "model.safetensors")
    assert not any(m.training for m in loaded.modules())
    x, context = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 77, 64)
    t, fps = torch.tensor([500]), torch.tensor([8])
    with torch.no_grad():
        assert torch.equal(loaded.unet(x, t, context, fps=fps), loaded.unet(x, t, context, fps=fps))
    save_echoreel(EchoReel(EchoReelConfig.for_preset(loaded.preset, layers=1, latent_dim=32, heads=2, head_dim=16)),
                  tmp_path / "echoreel.safetensors")
    assert not any(m.training for m in load_echoreel(tmp_path / "echoreel.safetensors").modules())


@pytest.mark.parametrize("name", ["videocrafter2-t2v-512", "lvdm-short-t2v"])
def test_a_file_without_schedule_buffers_gets_the_official_ones(tmp_path, name, caplog):
    """Never a meta tensor that fails in the first sampling step: the detected preset's official
    abar (and s_t for the VideoCrafter2 schedule), said once in the log."""
    source, state = official_state_dict(name)
    pruned = {k: v for k, v in state.items() if k not in ("alphas_cumprod", "scale_arr")}
    path = tmp_path / "pruned.ckpt"
    torch.save({"state_dict": pruned}, path)
    with caplog.at_level("WARNING", logger="echoreel_core.loading.checkpoints"):
        model = load_video_model(path)
    assert torch.equal(model.schedule.alphas_cumprod, source.preset.official_schedule().alphas_cumprod)
    assert model.schedule.alphas_cumprod.device.type == "cpu"
    warned = [r.getMessage() for r in caplog.records]
    assert any("no stored `alphas_cumprod`; using the official" in m and str(path) in m for m in warned)
    if source.preset.scale_b:
        assert torch.equal(model.schedule.scale_arr, source.preset.official_schedule().scale_arr)
        assert len(warned) == 2
    else:
        assert model.schedule.scale_arr is None and len(warned) == 1
    from echoreel_core.pipelines.generate import SamplingSettings, text_to_video
    frames = text_to_video(model, "a cat", SamplingSettings(height=16, width=16, frames=2, steps=2, cfg=1.0))
    assert frames.shape == (2, 16, 16, 3) and torch.isfinite(frames).all()


def test_weights_with_nan_or_inf_are_refused_naming_the_tensors(tmp_path):
    _, state = official_state_dict("videocrafter2-t2v-512")
    state["model.diffusion_model.out.2.weight"].view(-1)[0] = float("nan")
    state["first_stage_model.quant_conv.bias"][1] = float("inf")
    path = tmp_path / "diverged.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"2 weight tensors hold NaN or Inf: .*model\.diffusion_model\.out\.2\.weight") as error:
        load_video_model(path)
    assert str(path) in str(error.value) and "first_stage_model.quant_conv.bias" in str(error.value)


def test_damaged_metadata_is_a_checkpoint_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.a": torch.zeros(1)}, str(tmp_path / "m.safetensors"),
              metadata={"format": "echoreel.video_model", "preset": "{not json"})
    with pytest.raises(CheckpointError, match=r"m\.safetensors: its `preset` metadata cannot be read"):
        load_video_model(tmp_path / "m.safetensors")
    save_file({"video_inject_process.a": torch.zeros(1)}, str(tmp_path / "e.safetensors"),
              metadata={"format": "echoreel.weights", "config": '{"base_family": "lvdm"}'})
    with pytest.raises(CheckpointError, match=r"e\.safetensors: its `config` metadata cannot be read"):
        load_echoreel(tmp_path / "e.safetensors")
