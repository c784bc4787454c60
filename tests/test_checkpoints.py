"""Official checkpoint layouts, detection, conversion to safetensors, and bad files."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from echoreel_core.checkpoints import CheckpointError, load_video_model
from echoreel_core.models.video_model import VideoModel, component_prefixes
from echoreel_core.presets import tiny_preset

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


def test_bad_files_give_clear_errors(tmp_path):
    _, state = official_state_dict("videocrafter2-t2v-512")
    good = tmp_path / "good.safetensors"
    load_video_model_and_save = run_convert
    torch.save({"state_dict": state}, tmp_path / "good.ckpt")
    assert load_video_model_and_save(tmp_path / "good.ckpt", good).returncode == 0

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    random_bytes = tmp_path / "random.ckpt"
    random_bytes.write_bytes(os.urandom(4096))
    for path, pattern in (
        (truncated, "not a readable safetensors file"),
        (random_bytes, "not a (readable )?PyTorch checkpoint"),
        (tmp_path / "absent.ckpt", "no such file"),
    ):
        with pytest.raises(CheckpointError, match=pattern) as error:
            load_video_model(path)
        assert str(path) in str(error.value)


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
    with pytest.raises(CheckpointError, match="refused: the pickle references `[a-z_.]+getattr`|refused: the pickle references `getattr`") as error:
        load_video_model(path)
    assert str(path) in str(error.value)
    assert not marker.exists()


def test_loaded_model_is_in_eval_mode_and_samples_deterministically(tmp_path):
    """VideoCrafter2's temporal convolutions hold dropout: a model left in training mode would
    give a different video for the same seed on every run (found on the toy model)."""
    from echoreel_core.checkpoints import save_video_model
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
