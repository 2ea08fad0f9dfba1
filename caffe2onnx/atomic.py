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
    """Return the absolute path after checking its directory exists and is writable.

    Writability is tested by creating (and removing) a file there, which also holds for
    root and for read-only file systems, where ``os.access`` says yes.
    """
    target = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        existing = directory
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise OutputError(f"{path}: {existing} is a file, not a directory; choose another output path")
        raise OutputError(f"{path}: the output directory {directory} does not exist; create it first")
    if os.path.isdir(target):
        raise OutputError(f"{path}: is a directory; give a file name")
    try:
        fd, probe = tempfile.mkstemp(prefix=".caffe2onnx-write-test-", dir=directory)
    except OSError as exc:
        raise OutputError(
            f"{path}: the output directory {directory} is not writable ({exc.strerror})"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return target


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``path`` only if the block succeeds.

    An OSError while writing (disk full, ...) becomes an OutputError naming the file.
    """
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
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(f"{path}: cannot write the file: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
