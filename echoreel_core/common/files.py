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

A write that fails for a reason of the OS (read-only folder, full disk, missing folder) raises
`WriteError`, whose message is one line naming the target, never the temporary: the command
lines print it as it is. The saved file gets the mode any new file gets (0666 less the umask),
whatever the writer did to the temporary.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Callable

from safetensors import SafetensorError

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp(\.[^.]+)?$")
# how safetensors (Rust) names the OS error in its message: "(os error 28)", or older, "Os { code: 28"
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")


class WriteError(OSError):
    """A file that could not be written, with a one-line message: `cannot write <path>: <reason>`.

    An OSError (errno kept), so code that catches OSError still does; the path is the target's,
    since the temporary name means nothing to the user.
    """

    def __init__(self, path: str | Path, reason: OSError):
        super().__init__(reason.errno, reason.strerror or str(reason), str(path))

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def make_folder(path: str | Path) -> Path:
    """Create `path` and its parents if missing, for files about to be written there; a failure
    is a WriteError naming the folder, as a failed write is."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(path, error) from error
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None], *, keep_suffix: bool = False) -> Path:
    """Call write(tmp) to write the file at `tmp`, then move it to `path` in one step; returns `path`.

    `tmp` is a new, empty file next to `path`; `write` overwrites it, e.g.
    `save_file(tensors, str(tmp))` or `torch.save(obj, tmp)`. It is then given the mode a new file
    gets (0666 less the umask: safetensors replaces `tmp` by a temporary of its own, made 0600,
    which would otherwise reach the saved file), fsync'ed and os.replace'd onto `path`, and the
    folder is fsync'ed. On any exception (KeyboardInterrupt included) the temporary file is
    removed and `path` is left as it was; an OS error becomes a WriteError. keep_suffix=True ends
    the temporary name in path's suffix (`.mp4`) for writers that choose the format from the file
    name. The folder must exist.
    """
    path = Path(path)
    try:
        tmp, mode = _new_temporary(path, path.suffix if keep_suffix else "")
    except OSError as error:
        raise WriteError(path, error) from error
    try:
        write(tmp)
        os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDWR)  # writable: Windows flushes only handles open for writing
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        reason = _os_error(error)
        if reason is None:
            raise
        raise WriteError(path, reason) from error
    _fsync_dir(path.parent)
    return path


def _new_temporary(path: Path, suffix: str) -> tuple[Path, int]:
    """A new, empty temporary file next to `path`, and the mode it was created with: the usual one
    for a new file (0666 less the umask), read back rather than set by os.umask, which would change
    it for every thread of the process for a moment."""
    while True:  # a name no other writer holds; a clash of 32 random bits is retried, not shared
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp, tmp.stat().st_mode & 0o777


def _os_error(error: BaseException) -> OSError | None:
    """The OS error behind a failed write, if it was one. Writers hide it: torch.save's zip writer,
    closing after a full disk, raises a RuntimeError whose context is the OSError; safetensors
    (Rust) gives only its text, "... No space left on device (os error 28)" in a SafetensorError.
    Found either way, a full disk reads the same whichever library wrote the file."""
    seen = set()
    while isinstance(error, Exception) and id(error) not in seen:  # never KeyboardInterrupt
        seen.add(id(error))
        if isinstance(error, OSError):
            return error
        match = _RUST_OS_ERROR.search(str(error)) if isinstance(error, SafetensorError) else None
        if match is not None:
            code = int(match.group(1) or match.group(2))
            return OSError(code, os.strerror(code))
        error = error.__cause__ or error.__context__
    return None


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
