"""Training across machines, as two torchrun nodes on 127.0.0.1 (gloo, c10d rendezvous), the
recipe of the README: a run equals one process, a killed worker ends the run at once and the run
continues from the shared checkpoint, and a run never trains on disagreeing ranks (node-local
folders, different configurations) or hangs on a frozen one.

Each node is its own `torch.distributed.run` agent with one worker, started in its own session
so that the test can stop exactly the processes it started.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from test_train import ROOT, free_port, overrides, subprocess_env, world  # noqa: F401 - world is a fixture

from echoreel_core.common.files import temporaries
from echoreel_core.training.agreement import MARKER
from echoreel_core.training.config import load_config
from echoreel_core.training.loop import Trainer
from echoreel_core.training.state import load_checkpoint, resolve_checkpoint


class Node:
    """One torchrun agent (a 'node') and its log."""

    def __init__(self, name: str, log: pathlib.Path, port: int, args: list[str], cwd: pathlib.Path = ROOT):
        self.name, self.log, self.workers = name, log, {}
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "echoreel-test",
                   "--monitor-interval", "0.5", "-m", "echoreel_core.train", *args]
        with open(log, "w") as out:
            self.proc = subprocess.Popen(command, cwd=cwd, env=subprocess_env(PYTHONPATH=str(ROOT), LOGLEVEL=os.environ.get("ECHOREEL_TEST_TORCHRUN_LOGLEVEL", "WARNING")), stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def worker(self) -> int:
        """The pid of the training process this agent runs now."""
        children = pathlib.Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        for pid in children:
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"echoreel_core.train" in cmdline:
                self.workers[int(pid)] = cmdline
                return int(pid)
        raise AssertionError(f"{self.name}: no training worker among {children}\n{self.text()[-2000:]}")

    def is_rank0(self) -> bool:
        return "INFO [rank 0]" in self.text()

    def end(self) -> None:
        """Kill what this test started: the agent's session, and the workers it handed out (torchrun
        starts each in a session of its own; a SIGSTOPped one outlives its agent, stopped)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for pid, cmdline in self.workers.items():
            with contextlib.suppress(OSError):  # gone already (no /proc entry, or no such process)
                if pathlib.Path(f"/proc/{pid}/cmdline").read_bytes() == cmdline:  # still that worker
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def nodes(tmp_path):
    started: list[Node] = []

    def start(count: int = 2, args=None, cwds=None) -> list[Node]:
        port = free_port()
        for i in range(count):
            node_args = args[i] if isinstance(args[0], list) else args
            cwd = cwds[i] if cwds else ROOT
            started.append(Node(f"node{len(started)}", tmp_path / f"node{len(started)}.log", port, node_args, cwd))
        return started[-count:]

    yield start
    for node in started:
        node.end()


def wait_for(condition, what: str, nodes: list[Node], seconds: float = 180) -> float:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}\n" + "\n".join(
            f"--- {n.name}\n{n.text()[-3000:]}" for n in nodes)
        time.sleep(0.05)
    return time.monotonic()


def finished(nodes: list[Node], seconds: float = 240) -> list[int]:
    wait_for(lambda: all(n.proc.poll() is not None for n in nodes), "both nodes to end", nodes, seconds)
    return [n.proc.returncode for n in nodes]


def test_two_nodes_equal_one_process_and_a_killed_worker_leaves_a_run_that_continues(world, tmp_path, nodes):
    """2 nodes x batch 1 = 1 process x batch 2. A worker killed in the middle of the run ends the
    other node at once (no wait for the timeout), with the last checkpoint named and intact; the
    same command again (train.resume=auto) agrees on that checkpoint in the shared folder and
    continues, and the result equals the uninterrupted single process."""
    # A large Adam eps keeps the update linear in small gradients: see test_train's DDP test.
    common = ["optim.lr=0.1", "optim.eps=1e-3", "train.max_steps=10", "train.save_every=1", "train.timeout_s=60"]
    out = tmp_path / "shared"
    args = overrides(world, out, *common, "train.batch_size=1", "train.resume=auto")
    pair = nodes(args=args)
    wait_for(lambda: any("step_00000003.pt and" in n.text() for n in pair), "the save of step 3", pair)
    main = next(n for n in pair if n.is_rank0())
    killed = next(n for n in pair if n is not main)
    os.kill(killed.worker(), signal.SIGKILL)
    stopped = time.monotonic()
    assert all(rc != 0 for rc in finished(pair))
    assert time.monotonic() - stopped < 30  # far below train.timeout_s=60: a dead peer is seen at once
    line = next(line for line in main.text().splitlines() if "ERROR [rank 0]" in line)
    latest = resolve_checkpoint("latest", out / "checkpoints")
    assert "lost contact with another process of the run" in line and f"last checkpoint on disk is {latest}" in line
    assert 3 <= load_checkpoint(latest)["step"] < 10 and temporaries(out / "checkpoints") == []

    again = nodes(args=args)
    assert finished(again) == [0, 0], "\n".join(n.text()[-3000:] for n in again)
    text = next(n for n in again if n.is_rank0()).text()
    assert "global batch 2" in text and f"resumed from {latest}" in text and "done at step 10" in text
    single = Trainer(load_config(None, overrides(world, tmp_path / "single", *common, "train.batch_size=2")))
    single.fit()
    ddp = load_file(str(out / "echoreel.safetensors"))
    for key, value in single.echoreel.official_state_dict().items():
        torch.testing.assert_close(ddp[key], value, rtol=0, atol=1e-6, msg=key)
    rows = [[line.split(",") for line in (folder / "train_log.csv").read_text().splitlines()[1:]]
            for folder in (out, tmp_path / "single")]
    assert [r[0] for r in rows[0]] == [str(s) for s in range(1, 11)]  # the kill left no gap or repeat
    for a, b in zip(*rows):
        assert abs(float(a[1]) - float(b[1])) < 1e-5, (a, b)
    state = load_checkpoint(resolve_checkpoint("latest", out / "checkpoints"))
    assert state["world_size"] == 2 and state["step"] == 10


def test_node_local_output_folders_are_refused_on_every_rank(world, tmp_path, nodes):
    """The issue's corruption: each node resolves train.output_dir to a folder of its own, one of
    which holds a checkpoint (resume=auto would start one rank at step 2, the other at 0). Every
    rank refuses before resuming anything, with one message naming the rank and the folder."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    Trainer(load_config(None, overrides(world, a / "run", "train.max_steps=2"))).fit()
    # train.output_dir=run, relative: each node's own working directory
    pair = nodes(args=overrides(world, pathlib.Path("run"), "train.resume=auto", "train.timeout_s=60"), cwds=[a, b])
    assert all(rc != 0 for rc in finished(pair))
    for node in pair:
        text = node.text()
        assert "rank 1 does not agree with rank 0 on the output folder: rank 0 has just written" in text, text[-3000:]
        assert "must be one folder that every node shares" in text and "resumed from" not in text
    assert sorted(p.name for p in (a / "run" / "checkpoints").iterdir()) == ["latest", "step_00000002.pt"]
    assert (a / "run" / MARKER).is_file() != (b / "run" / MARKER).is_file()  # rank 0's folder only
    assert not (b / "run" / "checkpoints").exists()


def test_a_different_configuration_is_refused_on_every_rank(world, tmp_path, nodes):
    out = tmp_path / "run"
    base = overrides(world, out, "train.timeout_s=60")
    pair = nodes(args=[[*base, "optim.lr=1e-4"], [*base, "optim.lr=2e-4"]])
    assert all(rc != 0 for rc in finished(pair))
    for node in pair:
        text = node.text()
        assert "does not agree with rank 0 on the configuration: optim.lr is " in text, text[-3000:]
        assert "Every rank stops." in text
    assert not (out / "checkpoints").exists() and not (out / "train_log.csv").exists()


def test_a_stopped_peer_ends_the_run_within_the_timeout_and_the_checkpoint_stays_good(world, tmp_path, nodes):
    """SIGSTOP one node's worker (a frozen machine): the other ends with one line naming the
    timeout and the last checkpoint, within train.timeout_s; that checkpoint loads and is complete."""
    timeout = 15
    out = tmp_path / "run"
    pair = nodes(args=overrides(world, out, "train.max_steps=1000", "train.save_every=3", f"train.timeout_s={timeout}"))
    wait_for(lambda: any("step_00000006.pt and" in n.text() for n in pair), "the save of step 6", pair)
    main = next(n for n in pair if n.is_rank0())
    frozen = next(n for n in pair if n is not main)
    os.kill(frozen.worker(), signal.SIGSTOP)
    stopped = time.monotonic()
    ended = wait_for(lambda: main.proc.poll() is not None, "the running node to end", pair, timeout + 60)
    assert ended - stopped < timeout + 30, ended - stopped
    text = main.text()
    assert main.proc.returncode != 0
    line = next(line for line in text.splitlines() if "ERROR [rank 0]" in line)
    assert "lost contact with another process of the run" in line and f"train.timeout_s={timeout}" in line, line
    latest = resolve_checkpoint("latest", out / "checkpoints")
    assert f"the last checkpoint on disk is {latest}" in line
    state = load_checkpoint(latest)  # complete and loadable
    assert state["step"] >= 6 and latest.name == f"step_{state['step']:08d}.pt"
    assert temporaries(out / "checkpoints") == []
