"""The training memory estimate against a real step, the start-up refusal, and the memory savers.

The measured peak of a real step comes from the CPU allocator itself: the profiler's allocation
events carry c10's running total of allocated bytes (`total_allocated`), independent of the
estimate's own storage counting (tensors seen by the dispatcher); the weights made before
profiling are counted by their storages.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_train import overrides, world  # noqa: F401 - world is a fixture
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from echoreel_core.pipelines.memory import GiB, InsufficientMemoryError
from echoreel_core.models.presets import tiny_preset
from echoreel_core.train import main
from echoreel_core.training.config import load_config
from echoreel_core.training.loop import Trainer
from echoreel_core.training.memory import check_training_fits, cuda_autocast_policy, estimate_training_memory
from echoreel_core.training.state import load_checkpoint, resolve_checkpoint

PRESET = tiny_preset("lvdm-short-t2v")


def allocator_peak(run) -> int:
    """The highest total of bytes the CPU allocator held while `run()` ran, above what it held before.

    The events' running total also counts live tensors that earlier profiling sessions saw being
    allocated, so it is taken relative to the total just before the first allocation."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            events.append((event.start_time_ns, event.extra_fields.alloc_size, event.extra_fields.total_allocated))
        stack.extend(event.children)
    events.sort()
    before = events[0][2] - events[0][1]
    return max(total for _, _, total in events) - before


@pytest.mark.parametrize("extra", [[], ["train.precision=bf16", "train.gradient_checkpointing=true",
                                        "train.batch_size=1", "train.grad_accumulation=2"]],
                         ids=["fp32", "bf16-checkpointing-accumulation"])
def test_the_estimate_is_within_5_percent_of_the_measured_peak(world, tmp_path, extra):
    cfg = load_config(None, overrides(world, tmp_path, "train.max_steps=2", "train.save_every=100", *extra))
    estimate = estimate_training_memory(cfg, PRESET, 1, "cpu")
    trainer = Trainer(cfg)
    weights = sum(t.untyped_storage().nbytes() for m in (trainer.model, trainer.echoreel)
                  for t in [*m.parameters(), *m.buffers()])
    assert weights == estimate.frozen_base + estimate.trainable
    batches = iter(list(trainer.loader()))  # decoded before: the loader's videos are not the step's
    accumulation = cfg.train.grad_accumulation
    steps = lambda: [trainer.train_step([next(batches) for _ in range(accumulation)]) for _ in range(2)]  # noqa: E731
    measured = weights + allocator_peak(steps)
    assert abs(estimate.peak / measured - 1) < 0.05, (estimate.peak, measured)
    dynamic, counted = measured - weights, estimate.peak - weights  # the part that is not simply the weights
    assert abs(counted / dynamic - 1) < 0.05, (counted, dynamic)
    assert all(p.grad is None for p in trainer.params)  # freed after the step: validation never holds them


def test_gpu_autocast_policy_keeps_norms_and_softmax_in_fp32_and_restores_cpu_autocast():
    x = torch.randn(2, 8, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.nn.functional.linear(x, torch.randn(4, 4))
        with cuda_autocast_policy():
            assert F.group_norm(y, 2).dtype == F.layer_norm(y, (4,)).dtype == y.softmax(-1).dtype == torch.float32
            assert torch.nn.functional.linear(y, torch.randn(4, 4)).dtype == torch.bfloat16
        assert F.group_norm(y, 2).dtype == y.softmax(-1).dtype == torch.bfloat16  # CPU autocast as it was


def test_a_run_that_does_not_fit_is_refused_with_the_settings_that_would(world, tmp_path):
    cfg = load_config(None, overrides(world, tmp_path, "train.batch_size=2"))
    need = estimate_training_memory(cfg, PRESET, 1, "cpu")
    checkpointed = estimate_training_memory(load_config(None, overrides(world, tmp_path, "train.batch_size=2",
                                                                        "train.gradient_checkpointing=true")),
                                            PRESET, 1, "cpu")
    assert checkpointed.total < need.total
    limit = checkpointed.total  # room for the checkpointed run, not for this one
    with pytest.raises(InsufficientMemoryError) as refused:
        check_training_fits(cfg, PRESET, 1, torch.device("cpu"), limit)
    text = str(refused.value)
    assert f"training needs about {need.total / GiB:.1f} GiB" in text and f"it can have {limit / GiB:.1f} GiB" in text
    assert "these settings would fit: train.gradient_checkpointing=true (about" in text
    with pytest.raises(InsufficientMemoryError, match="neither gradient checkpointing, nor a smaller batch, nor"):
        check_training_fits(cfg, PRESET, 1, torch.device("cpu"), need.frozen_base)
    assert check_training_fits(cfg, PRESET, 1, torch.device("cpu"), need.total) == need


def test_estimate_memory_prints_every_part_for_checkpointing_on_and_off(world, tmp_path, capsys):
    assert main(["--threads", "1", "--estimate-memory", *overrides(world, tmp_path, "train.device=cpu")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("lvdm-short-t2v-tiny: 4 frames of 16x16, batch 2 per GPU, fp32")
    for row in ("frozen base model", "EchoReel weights (fp32)", "gradients (fp32)", "AdamW states",
                "activations and temporaries", "peak, one GPU", "DDP gradient buckets", "peak per GPU, DDP"):
        assert f"  {row} " in text, row
    assert "checkpointing on" in text and "checkpointing off" in text and "24 GB yes, 80 GB yes" in text
    assert not (tmp_path / "checkpoints").exists()  # nothing was trained or written


def test_host_offloaded_adamw_trains_bit_identically_and_its_checkpoints_resume_plain_runs(world, tmp_path):
    common = ["optim.lr=1e-3", "optim.grad_clip=0.01", "optim.warmup_steps=2", "train.save_every=2"]
    plain = Trainer(load_config(None, overrides(world, tmp_path / "plain", *common, "train.max_steps=3")))
    plain.fit()
    offloaded = Trainer(load_config(None, overrides(world, tmp_path / "offload", *common, "train.max_steps=2",
                                                    "optim.offload=true")))
    offloaded.fit()
    state = load_checkpoint(resolve_checkpoint("latest", tmp_path / "offload" / "checkpoints"))
    assert set(state["optimizer"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}  # torch's AdamW layout
    resumed = Trainer(load_config(None, overrides(world, tmp_path / "offload", *common, "train.max_steps=3",
                                                  "train.resume=latest")))  # offload off now
    resumed.fit()
    for key, value in plain.echoreel.state_dict().items():
        assert torch.equal(resumed.echoreel.state_dict()[key], value), key
    a, b = plain.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)
