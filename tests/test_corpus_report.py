"""tools/corpus_report.py: the per-file pipeline on three small corpus files, and its output."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import CORPUS

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="the shared corpus is not available")


def _load_tool():
    spec = importlib.util.spec_from_file_location("corpus_report", ROOT / "tools" / "corpus_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


report = _load_tool()


def test_small_net_converts_and_validates_against_torch_and_opencv():
    row = report.run_file("lenet_mnist.deploy.prototxt", CORPUS)
    assert row.outcome == "validates", row.reason
    assert row.format == "new"
    assert row.converts is True and row.validates is True
    assert row.inputs == "data=2x1x28x28"  # declared batch 64 lowered to MAX_BATCH
    assert row.torch_blobs == row.layers == 8
    assert 0 <= row.torch_max_rel < 1e-4 and row.torch.endswith("(8 blobs)")
    assert row.opencv_passed is True and row.opencv_max_rel < 1e-4, row.opencv
    assert row.unsupported == [] and row.reason == "" and not row.needs_diagnosis


def test_template_fails_with_a_clear_message():
    row = report.run_file("deeplabv2_vgg16_aspp_voc12.test.prototxt", CORPUS)
    assert row.outcome == "clear" and row.error_type == "ParseError"
    assert row.converts is False and row.validates is None
    assert "${NUM_LABELS}" in row.reason and "template" in row.reason
    assert row.reason.startswith("deeplabv2_vgg16_aspp_voc12.test.prototxt:381:")  # corpus path stripped
    assert "\n" not in row.reason


def test_unsupported_type_is_listed_and_fails_clearly():
    row = report.run_file("ssd300_vgg16_voc0712_tensorrt_iplugin.deploy.prototxt", CORPUS)
    assert row.outcome == "clear" and row.error_type == "UnsupportedLayersError"
    assert row.unsupported == ["IPlugin"]
    assert "IPlugin: conv4_3_norm" in row.reason and row.converts is False


def test_markdown_row_and_summary():
    rows = [
        report.Row(
            file="a.prototxt",
            format="V1",
            inputs="data=1x3x8x8",
            note="reduced",
            converts=True,
            validates=True,
            outcome="validates",
            torch="1e-06 (3 blobs)",
            opencv="not run: x | y",
        ),
        report.Row(
            file="b.prototxt", format="new", converts=False, outcome="clear", reason="bad", seconds=2.4
        ),
        report.Row(file="c.prototxt", converts=False, outcome="unclear", reason="KeyError during load: 'x'"),
    ]
    table = report.markdown(rows).splitlines()
    assert len(table) == 5 and table[0].count("|") == 11
    assert table[2].startswith("| `a.prototxt` | V1 | data=1x3x8x8 (reduced) | yes | yes | 1e-06 (3 blobs) |")
    assert "not run: x \\| y" in table[2]
    assert table[3].endswith("| - | bad | 2 |")
    assert report.summary(rows) == (
        "3 files: 1 convert, 1 validate, 0 convert but do not validate, 1 fail with a clear message, "
        "1 fail unclearly (bugs), 0 time out"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("layer {\n  name: 'a'\n}\n", "new"),
        ("layers{\n  name: 'a'\n  type: RELU\n}\n", "V1"),
        ("layers {\n  layer {\n    name: 'a'\n    type: 'relu'\n  }\n}\n", "V0"),
    ],
    ids=["new", "v1", "v0"],
)
def test_file_format(text, expected):
    assert report.file_format(text) == expected


def test_subprocess_driver_returns_the_row_and_survives_a_timeout():
    row = report.run_in_subprocess("opencv_accum.test.prototxt", CORPUS, 120, opencv=False, threads=1)
    assert row.finished and row.outcome == "validates" and row.validates
    slow = report.run_in_subprocess("lenet_mnist.deploy.prototxt", CORPUS, 0.2, opencv=False, threads=1)
    assert slow.outcome == "timeout" and slow.reason.startswith("timeout after 0 s during")


def test_detections_drop_padding_and_sort_by_label_then_score():
    rows = np.array(
        [[0, 7, 0.9, 0, 0, 1, 1], [0, 3, 0.5, 0, 0, 1, 1], [0, 3, 0.8, 0, 0, 1, 1], [-1] * 7], np.float32
    ).reshape(1, 1, 4, 7)
    got = report._detections(rows)
    assert got[:, 1].tolist() == [3, 3, 7] and got[:, 2].tolist() == pytest.approx([0.8, 0.5, 0.9])
