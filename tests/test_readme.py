"""The README cannot drift: its Python blocks run as written on the toy model, every command it
shows names a module or script that exists with the options it uses, and CI runs its test command."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from readme import ROOT, code_blocks, commands, setup_commands

from echoreel_core.video_io import probe_video


def test_python_blocks_run_as_written(tmp_path):
    """In order, in one namespace (the second continues the first), in a scratch folder."""
    blocks = code_blocks("python")
    assert len(blocks) >= 2
    script = "\n\n".join(blocks)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    written = sorted(p.name for p in tmp_path.glob("*.mp4"))
    assert written == ["red_circle.mp4", "red_circle_orbiting.mp4"]
    for name in written:
        info = probe_video(tmp_path / name)
        assert (info.frame_count, info.width, info.height) == (16, 64, 64)


def python_commands() -> list[tuple[str, list[str]]]:
    """(what runs, its arguments) for every `.venv/bin/python -m X ...` or `... bench/y.py ...` line."""
    found = []
    for block in code_blocks("bash"):
        for line in commands(block):
            match = re.match(r"\.venv/bin/python (?:-m torch\.distributed\.run .*?)?(-m \S+|\S+\.py)(.*)", line)
            if match:
                found.append((match.group(1), match.group(2).split()))
    return found


@pytest.mark.parametrize("target, arguments", python_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_names_a_real_entry_point_and_real_options(target, arguments):
    """`--help` works and lists every `--option` the README passes; `key=value` training
    overrides name real configuration keys."""
    runner = target.split() if target.startswith("-m") else [str(ROOT / target)]
    result = subprocess.run([sys.executable, *runner, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for option in (a.split("=")[0] for a in arguments if a.startswith("--")):
        assert re.search(rf"(^|\s|\[){re.escape(option)}\b", result.stdout), f"{target}: {option} not in --help"
    for key in (a.split("=")[0] for a in arguments if "=" in a and not a.startswith("-")):
        assert f"  {key} [" in result.stdout, f"{target}: no configuration key {key}"


def test_ci_runs_exactly_the_readme_test_command():
    _, tests = setup_commands()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [tests]
