"""Print the pass matrix of the real decoder nets (the list of tests/test_decoder_nets.py).

For each net: does it convert, the max relative error of every compared blob against the
PyTorch reference and against OpenCV (or why OpenCV cannot run it), and the seconds taken
(make-weights + convert + onnxruntime + references). Markdown on stdout.

    python tools/net_matrix.py                  # every net
    python tools/net_matrix.py fcn8s enet       # some nets
    python tools/net_matrix.py --no-opencv --skip-slow
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # as in the test suite

from tests.test_decoder_nets import NETS, NetResult, run_decoder_net, sizes_of  # noqa: E402


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def verdict(report) -> str:
    if report is None:
        return ""
    first = report.first_failure
    where = "" if first is None else f" FAIL at {first.layer} ({first.layer_type})"
    return f"{report.max_rel:.2g} ({len(report.rows)} blobs){where}"


def row(key: str, opencv: bool) -> list[str]:
    spec = NETS[key]
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="net-matrix-") as tmp:
            result: NetResult = run_decoder_net(key, Path(tmp), opencv=opencv)
    except Exception as exc:  # report every failure in the table, keep going
        return [
            key,
            sizes_of(spec),
            f"no: {type(exc).__name__}: {exc}",
            "",
            "",
            f"{time.perf_counter() - start:.0f}",
        ]
    torch_cell = verdict(result.torch)
    if result.torch.notes:
        torch_cell += f"; {len(result.torch.notes)} pooling layer(s) with argmax near-ties"
    cv_cell = verdict(result.opencv) if result.opencv is not None else f"not run: {result.opencv_note}"
    if result.opencv is not None and result.opencv_note:
        cv_cell += f" ({result.opencv_note})"
    return [key, result.sizes, "yes", torch_cell, cv_cell, f"{result.seconds:.0f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nets", nargs="*", help=f"net keys (default: all): {', '.join(NETS)}")
    parser.add_argument("--no-opencv", action="store_true", help="skip the OpenCV reference")
    parser.add_argument("--skip-slow", action="store_true", help="skip the nets marked slow")
    args = parser.parse_args(argv)
    unknown = [k for k in args.nets if k not in NETS]
    if unknown:
        parser.error(f"unknown net(s) {', '.join(unknown)}; choose from {', '.join(NETS)}")
    keys = args.nets or [k for k in NETS if not (args.skip_slow and NETS[k].slow)]
    print("| net | input size | converts | max rel error vs torch | vs OpenCV | seconds |")
    print("|---|---|---|---|---|---|")
    for key in keys:
        print("| " + " | ".join(cell(c) for c in row(key, not args.no_opencv)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
