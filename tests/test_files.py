"""files.atomic_write, the one write path: failures in one line, the old file kept, the usual mode."""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from echoreel_core.loading.checkpoints import save_video_model
from echoreel_core.echoreel.weights import EchoReel, EchoReelConfig, save_echoreel
from echoreel_core.common.files import WriteError, atomic_write, temporaries
from echoreel_core.training.state import LATEST, save_checkpoint
from echoreel_core.video_io import write_video
from tiny import tiny_model
from write_failures import file_size_limit, make_read_only

ROOT = pathlib.Path(__file__).resolve().parents[1]
OLD = b"the previous good file"


def assert_write_error(error: WriteError, target, reason: str) -> None:
    assert isinstance(error, OSError)
    assert str(error) == f"cannot write {target}: {reason}"


def test_a_read_only_folder_is_one_line_naming_the_target(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    target.write_bytes(OLD)
    try:
        if not make_read_only(tmp_path):  # root writes anyway: refuse the temporary's creation
            real_open = os.open

            def refuse(path, flags, *args):
                if flags & os.O_CREAT:
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
                return real_open(path, flags, *args)

            monkeypatch.setattr(os, "open", refuse)
        with pytest.raises(WriteError) as caught:
            atomic_write(target, lambda tmp: tmp.write_bytes(b"new"))
    finally:
        monkeypatch.undo()
        tmp_path.chmod(0o755)
    assert_write_error(caught.value, target, "Permission denied")
    assert target.read_bytes() == OLD and os.listdir(tmp_path) == ["model.safetensors"]


def test_a_full_disk_is_one_line_naming_the_target(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(OLD)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # the write call, mocked

    with pytest.raises(WriteError) as caught:
        atomic_write(target, write)
    assert_write_error(caught.value, target, "No space left on device")
    assert caught.value.errno == errno.ENOSPC
    assert target.read_bytes() == OLD and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_a_missing_folder_is_one_line_naming_the_target(tmp_path):
    target = tmp_path / "absent" / "echoreel.safetensors"
    with pytest.raises(WriteError) as caught:
        atomic_write(target, lambda tmp: tmp.write_bytes(b"new"))
    assert_write_error(caught.value, target, "No such file or directory")
    assert os.listdir(tmp_path) == []


def test_libraries_that_hide_the_os_error_still_give_it(tmp_path):
    """Real refused writes (a file-size limit): safetensors reports it only in its message, torch's
    zip writer raises a RuntimeError over it, PyAV an error of its own; each is the same one line."""
    tensors = {"weight": torch.zeros(64, 1024)}  # 256 KiB
    video = torch.rand(8, 128, 128, 3, generator=torch.Generator().manual_seed(0))
    writers = {
        "model.safetensors": lambda path: atomic_write(path, lambda tmp: save_file(tensors, str(tmp))),
        "checkpoints/step_00000002.pt": lambda path: save_checkpoint(path.parent, 2, tensors),
        "video.mp4": lambda path: write_video(path, video, 8),
    }
    (tmp_path / "checkpoints").mkdir()
    for name, write in writers.items():
        target = tmp_path / name
        target.write_bytes(OLD)
        with file_size_limit(16 * 1024), pytest.raises(WriteError) as caught:
            write(target)
        assert_write_error(caught.value, target, "File too large")
        assert target.read_bytes() == OLD and temporaries(target.parent) == [], name
    assert not (tmp_path / "checkpoints" / LATEST).exists()  # never pointed at a failed checkpoint


def test_convert_prints_a_failed_write_as_one_line(tmp_path):
    source, out = tmp_path / "model.safetensors", tmp_path / "out.safetensors"
    save_video_model(tiny_model("lvdm-short-t2v"), source)
    out.write_bytes(OLD)
    command = [sys.executable, "-m", "echoreel_core.convert", str(source)]
    with file_size_limit(1024 * 1024):  # the tiny model takes 20 MB
        full = subprocess.run([*command, str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    absent = tmp_path / "absent" / "out.safetensors"
    missing = subprocess.run([*command, str(absent)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert full.returncode == 1 and full.stderr.splitlines()[-1] == f"error: cannot write {out}: File too large"
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[-1] == f"error: cannot write {absent}: No such file or directory"
    assert "Traceback" not in full.stderr + missing.stderr
    assert out.read_bytes() == OLD and sorted(os.listdir(tmp_path)) == ["model.safetensors", "out.safetensors"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_saved_files_get_the_usual_mode_for_the_umask(tmp_path, umask, mode):
    """safetensors writes a 0600 temporary of its own and renames it onto ours: without the fix
    model and EchoReel files came out 0600 whatever the umask."""
    model = tiny_model("lvdm-short-t2v")
    echoreel = EchoReel(EchoReelConfig.for_preset(model.preset, layers=1, latent_dim=32, heads=2, head_dim=16,
                                                  latent_text_dim=32))
    previous = os.umask(umask)
    try:
        saved = [save_video_model(model, tmp_path / "model.safetensors"),
                 save_echoreel(echoreel, tmp_path / "echoreel.safetensors"),
                 save_checkpoint(tmp_path / "checkpoints", 1, {"step": 1})]
    finally:
        os.umask(previous)
    saved.append(tmp_path / "checkpoints" / LATEST)
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in saved} == {path.name: oct(mode) for path in saved}
