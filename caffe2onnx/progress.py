"""A progress bar for the long part of converting a large model: writing its weights.

Shown only when asked for (the CLI asks unless ``--quiet``), when the stream is a
terminal, and when there are at least ``MIN_BYTES`` to write; otherwise every call is a
no-op. tqdm draws the bar when it is installed, else a small built-in bar does.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

MIN_BYTES = 64 << 20  # smaller models are written in well under a second


class Progress:
    """The no-op bar; ``update`` takes a number of bytes done since the last call."""

    def update(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TextBar(Progress):
    """``description  43% |#########           | 240/553 MB`` redrawn at most 10 times a second."""

    WIDTH = 30

    def __init__(self, total: int, description: str, stream: TextIO) -> None:
        self.total = max(1, total)
        self.description = description
        self.stream = stream
        self.done = 0
        self._drawn_at = 0.0

    def update(self, count: int) -> None:
        self.done = min(self.total, self.done + count)
        now = time.monotonic()
        if now - self._drawn_at >= 0.1 or self.done == self.total:
            self._drawn_at = now
            self._draw()

    def _draw(self) -> None:
        filled = self.WIDTH * self.done // self.total
        bar = "#" * filled + " " * (self.WIDTH - filled)
        mb = 1 << 20
        self.stream.write(
            f"\r{self.description} {100 * self.done // self.total:3d}% |{bar}| "
            f"{self.done // mb}/{self.total // mb} MB"
        )
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\r\x1b[K")  # erase the bar: the log line that follows says it all
        self.stream.flush()


class _TqdmBar(Progress):
    def __init__(self, total: int, description: str, stream: TextIO) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=total,
            desc=description,
            file=stream,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            leave=False,
            dynamic_ncols=True,
        )

    def update(self, count: int) -> None:
        self._bar.update(count)

    def close(self) -> None:
        self._bar.close()


def progress_bar(
    total: int,
    description: str,
    *,
    enabled: bool = True,
    stream: TextIO | None = None,
    min_total: int = MIN_BYTES,
) -> Progress:
    """A bar over ``total`` bytes, or a no-op one (disabled, not a TTY, or small)."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if not enabled or total < min_total or stream is None or not (isatty and isatty()):
        return Progress()
    try:
        return _TqdmBar(total, description, stream)
    except ImportError:
        return _TextBar(total, description, stream)
