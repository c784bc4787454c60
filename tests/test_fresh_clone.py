"""The README's demo command, run the way a new user runs it: on a fresh clone.

A green suite on a developer's checkout once hid a demo that crashed on a fresh clone (no
`outputs/` folder). This clones the repository's committed HEAD into a scratch folder and runs
the demo command exactly as the README's set-up block states it. The clone reuses this
checkout's finished `.venv` (a link): setup_venv.sh sees its stamp and installs nothing, and the
clone's own code runs, since `python -m` puts the clone first on the path.
"""

from __future__ import annotations

import subprocess

import torch
from readme import ROOT, setup_commands

from echoreel_core.video_io import probe_video, read_video_frames


def test_readme_demo_command_on_a_fresh_clone(tmp_path):
    demo, _ = setup_commands()
    assert demo == "bash scripts/demo.sh"
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=300)
    assert not (clone / "outputs").exists()
    (clone / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    # The shared .venv must be taken as finished, or the clone's set-up would point its editable
    # install at the clone (which this test then deletes): the stamp must match the clone's files.
    wanted = subprocess.run("cat scripts/setup_venv.sh pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1",
                            shell=True, cwd=clone, capture_output=True, text=True, check=True).stdout.strip()
    stamp = ROOT / ".venv" / ".echoreel-setup"
    assert stamp.is_file() and stamp.read_text().strip() == wanted, (
        "the .venv stamp does not match the committed set-up files: commit scripts/setup_venv.sh, "
        "pyproject.toml and constraints.txt, then run scripts/setup_venv.sh"
    )
    where = subprocess.run([".venv/bin/python", "-c", "import echoreel_core; print(echoreel_core.__file__)"],
                           cwd=clone, capture_output=True, text=True, timeout=120)
    assert where.stdout.strip() == str(clone / "echoreel_core" / "__init__.py")

    result = subprocess.run(demo, shell=True, cwd=clone, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "setting up .venv" not in result.stderr  # the stamp held: nothing was installed
    out = clone / "outputs" / "demo.mp4"
    assert f"wrote {out.relative_to(clone)}" in result.stdout
    info = probe_video(out)
    assert (info.frame_count, info.width, info.height) == (16, 3 * 64 + 2 * 2, 64)
    frames, _, _ = read_video_frames(out, num_frames=16, stride=1)  # (t, h, w, 3)
    assert frames.mean() > 0.2  # the toy world's grey background, not black
    assert (frames.flatten(1).std(dim=1) > 0.05).all()  # every frame shows something
    assert not torch.equal(frames[0], frames[-1])  # and it moves
