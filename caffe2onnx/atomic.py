"""Write output files atomically: to a temporary file beside the target, then rename.

A failure (or Ctrl-C) half-way leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from caffe2onnx.errors import OutputError


def check_output_dir(path: str | os.PathLike[str]) -> str:
    """Return the absolute path after checking its directory exists and is writable."""
    target = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise OutputError(f"{path}: the output directory {directory} does not exist; create it first")
    if not os.access(directory, os.W_OK):
        raise OutputError(f"{path}: the output directory {directory} is not writable")
    if os.path.isdir(target):
        raise OutputError(f"{path}: is a directory; give a file name")
    return target


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``path`` only if the block succeeds."""
    target = check_output_dir(path)
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(target) + ".", suffix=".part", dir=os.path.dirname(target)
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
