"""The README stays true: its commands point at files that exist, its layer table is current."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import support_table  # noqa: E402


def test_supported_layer_table_is_generated_from_the_registry():
    readme = (ROOT / "README.md").read_text()
    assert support_table.block() in readme, "run: python tools/support_table.py --write"


def test_first_lines_give_the_install_and_test_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    block = "\n".join(lines[:6])
    install = next(line for line in lines[:6] if line.startswith("pip install"))
    assert "torch==2.13.0" in install and "caffe2onnx convert" in install and "--validate" in install
    sample = re.search(r"convert (\S+\.prototxt)", install).group(1)
    assert (ROOT / sample).is_file(), f"the README's sample net {sample} must exist"
    assert "python -m pytest" in block


def test_ci_runs_the_readme_test_command():
    readme_test = next(
        line
        for line in (ROOT / "README.md").read_text().splitlines()[:6]
        if line.startswith("python -m pytest")
    )
    assert readme_test.split()[-1] in (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -n 2" in (ROOT / ".ci" / "run").read_text()
