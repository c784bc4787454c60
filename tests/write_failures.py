"""Writes that really fail, for the tests, without a full disk or a read-only mount.

A file-size limit (RLIMIT_FSIZE) makes the OS refuse every write past it (EFBIG, "File too
large"), whichever library writes: Python's files, torch's zip writer, safetensors' Rust, PyAV.
Child processes inherit it, so a command line can be run under it too.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal

import pytest


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """No file can grow past `nbytes` inside the block (this process and the ones it starts)."""
    resource = pytest.importorskip("resource")  # POSIX only
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def make_read_only(folder: pathlib.Path) -> bool:
    """chmod 0o555 `folder`; True if that stops writes there. It does not for root (tests in
    containers often run as root), who then needs the refusal mocked."""
    folder.chmod(0o555)
    return not os.access(folder, os.W_OK)
