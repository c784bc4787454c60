"""Writing files atomically: a reader sees the old file or the complete new one, never a part.

Every file the package writes for later use goes through `atomic_write`: model and EchoReel
safetensors, training checkpoints and their `latest` pointer, cache entries, videos. The data
go to a temporary file in the target's folder (so the final os.replace stays on one filesystem
and is atomic on POSIX and Windows), which is fsync'ed before the replace; the folder is fsync'ed
after it, so the rename survives a power cut too.

Temporary names are `.<name>.<8 hex>.tmp` (hidden, unique per call, reserved with O_EXCL, so
concurrent writers of the same target never share one), or `.<name>.<8 hex>.tmp<suffix>` with
keep_suffix=True for writers that pick a format by extension. A failing write removes its
temporary file; a killed process can leave one behind, which `temporaries` finds for clean-up.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Callable

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp(\.[^.]+)?$")


def atomic_write(path: str | Path, write: Callable[[Path], None], *, keep_suffix: bool = False) -> Path:
    """Call write(tmp) to write the file at `tmp`, then move it to `path` in one step; returns `path`.

    `tmp` is a new, empty file next to `path` (created with the usual permissions, 0666 less the
    umask, not mkstemp's 0600); `write` overwrites it, e.g. `save_file(tensors, str(tmp))` or
    `torch.save(obj, tmp)`. It is then fsync'ed and os.replace'd onto `path`, and the folder is
    fsync'ed. On any exception (KeyboardInterrupt included) the temporary file is removed and
    `path` is left as it was. keep_suffix=True ends the temporary name in path's suffix (`.mp4`)
    for writers that choose the format from the file name. The folder must exist.
    """
    path = Path(path)
    suffix = path.suffix if keep_suffix else ""
    while True:  # a name no other writer holds; a clash of 32 random bits is retried, not shared
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDWR)  # writable: Windows flushes only handles open for writing
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def temporaries(folder: str | Path, name: str | None = None) -> list[Path]:
    """The temporary files that interrupted `atomic_write`s left in `folder` (of target `name` only, if given)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if (m := _TEMPORARY.match(p.name)) and (name is None or m.group("name") == name))


def _fsync_dir(folder: str | Path) -> None:
    """Make a rename in `folder` durable; skipped where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
