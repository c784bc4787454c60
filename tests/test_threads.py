"""CPU threads for the command lines (echoreel_core/common/threads.py): --threads beats OMP_NUM_THREADS beats
the available cores, shared between torchrun's local processes; the CLIs say what they chose."""

import argparse
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from echoreel_core.common import threads
from echoreel_core.common.threads import add_threads_argument, available_cores, configure_threads

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No thread variables from the caller's shell, and torch's count restored afterwards (the
    suite runs on one thread: see conftest.py)."""
    for name in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def six_cores(monkeypatch):
    """A process allowed on 6 cores, whatever this machine has."""
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)


def test_default_is_every_core_this_process_may_use():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert available_cores() == expected
    assert configure_threads(None) == f"torch threads: {expected} (all available cores)"
    assert torch.get_num_threads() == expected


def test_default_follows_the_affinity_not_the_machine(six_cores):
    assert configure_threads(None) == "torch threads: 6 (all available cores)"
    assert torch.get_num_threads() == 6


def test_explicit_threads_beat_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert configure_threads(3) == "torch threads: 3 (--threads)"
    assert torch.get_num_threads() == 3
    with pytest.raises(ValueError, match="at least 1, got 0"):
        configure_threads(0)


@pytest.mark.parametrize("value", ["3", " 3 ", "3,1"])  # "3,1": OpenMP's nested form, outer level first
def test_omp_num_threads_beats_the_cores(monkeypatch, six_cores, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert configure_threads(None) == "torch threads: 3 (OMP_NUM_THREADS)"
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize("value", ["", "0", "many", "-2"])
def test_omp_num_threads_without_a_count_is_ignored(monkeypatch, six_cores, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert configure_threads(None) == "torch threads: 6 (all available cores)"


def test_torchrun_local_processes_share_the_cores(monkeypatch, six_cores):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert configure_threads(None) == "torch threads: 3 (6 available cores / 2 local processes)"
    assert torch.get_num_threads() == 3
    # torchrun sets OMP_NUM_THREADS=1 itself for several local processes: not taken as a choice
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert configure_threads(None) == ("torch threads: 3 (6 available cores / 2 local processes; "
                                       "OMP_NUM_THREADS=1 taken as torchrun's default)")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # any other value is the user's
    assert configure_threads(None) == "torch threads: 2 (OMP_NUM_THREADS)"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # more processes than cores: one thread each, never 0
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert configure_threads(None) == "torch threads: 1 (6 available cores / 8 local processes)"


def test_threads_option(capsys):
    parser = argparse.ArgumentParser(prog="cli")
    add_threads_argument(parser)
    assert parser.parse_args([]).threads is None
    assert parser.parse_args(["--threads", "4"]).threads == 4
    assert "--threads N" in parser.format_help() and "OMP_NUM_THREADS" in parser.format_help()
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as refused:
            parser.parse_args(["--threads", bad])
        assert refused.value.code == 2
        assert f"argument --threads: must be a whole number of threads >= 1, got '{bad}'" in capsys.readouterr().err


def test_a_cli_says_its_thread_count_first(tmp_path):
    """The toy world's CLI, run as a user would: its first stderr line is the thread line."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    result = subprocess.run(
        [sys.executable, "-m", "echoreel_core.toy.world", str(tmp_path), "--pairs", "1", "--base-videos", "1",
         "--eval-pairs", "1", "--size", "32", "--frames", "2", "--stride", "1", "--workers", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == f"torch threads: {available_cores()} (all available cores)"
