"""``caffe2onnx validate``: any ONNX file against the Caffe net, blob by blob.

The ONNX files under test are our own exports, deliberately broken copies of them (one
weight tensor corrupted, one Resize's coordinate mode flipped) and copies renamed the
way other converters name tensors. Verdicts are checked against what was broken, never
against the tool's own output. Exit codes: 0 pass, 1 mismatch, 2 inputs that do not fit.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import caffe2onnx
from caffe2onnx.cli import main
from caffe2onnx.inputs import Preprocess, build_feeds, parse_mean
from caffe2onnx.make_weights import make_weights
from caffe2onnx.parser import load_net
from caffe2onnx.validation import compare_feeds, cosine_similarity
from tests.helpers import SAMPLES, write

# conv1 -> in-place ReLU -> conv2 -> in-place ReLU -> MAX pool -> Interp (zoom 2) -> 1x1 conv
NET = """name: "small"
input: "data"
input_shape { dim: 1 dim: 3 dim: 12 dim: 12 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool1" type: "Pooling" bottom: "conv2" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "interp" type: "Interp" bottom: "pool1" top: "interp" interp_param { zoom_factor: 2 } }
layer { name: "score" type: "Convolution" bottom: "interp" top: "score" convolution_param { num_output: 2 kernel_size: 1 } }
"""
LAYERS = ["conv1", "relu1", "conv2", "relu2", "pool1", "interp", "score"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The small net, its seeded caffemodel and our ONNX export of it."""
    root = tmp_path_factory.mktemp("small")
    prototxt = write(root, NET)
    weights = root / "w.caffemodel"
    make_weights(prototxt, weights, seed=2)
    good = root / "good.onnx"
    assert main(["convert", str(prototxt), str(weights), "-o", str(good), "-q"]) == 0
    return prototxt, weights, good


def edited(model_path: Path, out: Path, edit) -> Path:
    model = onnx.load(str(model_path))
    edit(model)
    onnx.save(model, str(out))
    return out


def corrupt_weight(name: str, delta: float = 0.5):
    def edit(model: onnx.ModelProto) -> None:
        for init in model.graph.initializer:
            if init.name == name:
                array = numpy_helper.to_array(init).copy()
                array.flat[5] += delta
                init.CopyFrom(numpy_helper.from_array(array, init.name))
                return
        raise AssertionError(f"no initializer {name}")

    return edit


def flip_resize_mode(model: onnx.ModelProto) -> None:
    (resize,) = [n for n in model.graph.node if n.op_type == "Resize"]
    (mode,) = [a for a in resize.attribute if a.name == "coordinate_transformation_mode"]
    assert mode.s == b"align_corners"
    mode.s = b"half_pixel"


def rename_tensors(model: onnx.ModelProto, rename) -> None:
    """Rename every value (inputs, outputs, node outputs) as another converter would."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    names = [i.name for i in graph.input if i.name not in initializers]
    names += [o for node in graph.node for o in node.output if o]
    mapping = {name: rename(i, name) for i, name in enumerate(names)}
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = mapping.get(value.name, value.name)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["validate", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----------------------------------------------------------------------------- verdicts


def test_our_own_export_validates_with_every_blob_compared(small, capsys):
    prototxt, weights, good = small
    code, out, err = run_cli(capsys, prototxt, weights, "--onnx", good)
    assert code == 0, out + err
    assert "PASS" in out
    for layer in LAYERS:
        assert f"\n{layer} " in out, f"layer {layer} is in the table"
    assert "cosine" in out and "max rel" in out


def test_bundled_sample_validates_with_seeds_and_batch_against_both_references(capsys):
    report = caffe2onnx.validate(
        SAMPLES / "lenet_sample.prototxt", random_weights=0, seeds=3, batch=2, reference="both"
    )
    assert report.passed, report.summary()
    assert report.seeds == (0, 1, 2) and report.batch == 2
    assert {r.reference for r in report.rows} == {"pytorch", "opencv"}
    assert all(r.shape[0] == 2 for r in report.rows)
    assert report.max_rel < 1e-5


def test_one_corrupted_weight_fails_at_that_layer(small, tmp_path, capsys):
    prototxt, weights, good = small
    bad = edited(good, tmp_path / "bad.onnx", corrupt_weight("conv2/weight"))
    report_path = tmp_path / "r.json"
    code, out, _ = run_cli(capsys, prototxt, weights, "--onnx", bad, "--report", report_path)
    assert code == 1
    assert "first divergence: layer 'conv2' (Convolution)" in out
    data = json.loads(report_path.read_text())
    rows = {r["layer"]: r for r in data["rows"]}
    assert rows["conv1"]["passed"] and rows["relu1"]["passed"], "layers before conv2 still agree"
    assert not rows["conv2"]["passed"] and rows["conv2"]["max_rel"] > 1e-2
    assert data["first_divergence"]["layer"] == "conv2"
    assert data["verdict"] == "FAIL" and data["passed"] is False


def test_corruption_is_also_caught_by_the_opencv_reference(small, tmp_path, capsys):
    prototxt, weights, good = small
    bad = edited(good, tmp_path / "bad.onnx", corrupt_weight("score/weight"))
    code, out, _ = run_cli(capsys, prototxt, weights, "--onnx", bad, "--reference", "both")
    assert code == 1
    assert "first divergence: layer 'score' (Convolution), blob 'score' [vs pytorch]" in out
    assert "first divergence: layer 'score' (Convolution), blob 'score' [vs opencv]" in out
    code, out, _ = run_cli(capsys, prototxt, weights, "--onnx", good, "--reference", "opencv")
    assert code == 0, out


def test_resize_with_a_flipped_coordinate_mode_fails_at_the_interp_layer(small, tmp_path, capsys):
    prototxt, weights, good = small
    bad = edited(good, tmp_path / "resize.onnx", flip_resize_mode)
    code, out, _ = run_cli(capsys, prototxt, weights, "--onnx", bad, "--reference", "both")
    assert code == 1
    assert "first divergence: layer 'interp' (Interp)" in out
    assert "layer 'pool1'" not in out.split("FAIL:")[1], "pool1 still agrees"


def test_other_converters_tensor_names_validate_by_input_and_output_order(small, tmp_path, capsys, caplog):
    prototxt, weights, good = small
    foreign = edited(
        good,
        tmp_path / "foreign.onnx",
        lambda m: rename_tensors(m, lambda i, name: "input.1" if name == "data" else f"/node_{i}/out"),
    )
    code, out, _ = run_cli(capsys, prototxt, weights, "--onnx", foreign)
    assert code == 0, out
    assert "paired by order" in caplog.text
    assert "'data' -> 'input.1'" in caplog.text
    report = caffe2onnx.validate(prototxt, weights, foreign)
    assert report.matched_by == "order"
    assert [(r.layer, r.onnx_name) for r in report.rows] == [("score", "/node_7/out")]
    # ... and a broken foreign file still fails, at the output.
    bad = edited(foreign, tmp_path / "foreign_bad.onnx", corrupt_weight("conv1/weight"))
    code, out, _ = run_cli(capsys, prototxt, weights, "--onnx", bad)
    assert code == 1 and "first divergence: layer 'score'" in out


def test_foreign_names_for_in_place_blobs_match_the_version_they_hold(small, tmp_path):
    """A converter naming the convolution output 'conv1' (before the in-place ReLU)."""
    prototxt, weights, good = small

    def caffe_like(i: int, name: str) -> str:
        if "@" in name:
            return name.split("@")[0]  # conv1@conv1 (pre-ReLU) -> conv1
        return name if name in ("data", "pool1", "interp", "score") else f"{name}_relu"

    foreign = edited(good, tmp_path / "inplace.onnx", lambda m: rename_tensors(m, caffe_like))
    report = caffe2onnx.validate(prototxt, weights, foreign)
    assert report.passed, report.table()
    rows = {r.onnx_name: r for r in report.rows}
    assert rows["conv1"].tensor == "conv1@conv1" and rows["conv1"].layer == "conv1"
    assert any("holds blob version 'conv1@conv1'" in n for n in report.notes)
    bad = edited(foreign, tmp_path / "inplace_bad.onnx", corrupt_weight("conv2/weight"))
    report = caffe2onnx.validate(prototxt, weights, bad)
    assert report.first_failure.layer in ("conv2", "relu2"), report.table()


# ----------------------------------------------------------------------------- bad input: exit 2


def test_onnx_with_an_extra_input_exits_2_naming_both_sides(small, tmp_path, capsys):
    prototxt, weights, good = small

    def add_input(model: onnx.ModelProto) -> None:
        model.graph.input.append(onnx.helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, [1, 5]))

    bad = edited(good, tmp_path / "two_inputs.onnx", add_input)
    code, _, err = run_cli(capsys, prototxt, weights, "--onnx", bad)
    assert code == 2
    assert "2 input(s) but the Caffe net has 1" in err
    assert "'extra' 1x5" in err and "'data' 1x3x12x12" in err
    assert "Traceback" not in err


def test_onnx_input_of_another_shape_exits_2_naming_both_shapes(small, tmp_path, capsys):
    prototxt, weights, _ = small
    other = tmp_path / "16.onnx"
    main(["convert", str(prototxt), str(weights), "--input-shape", "data=1,3,16,16", "-o", str(other), "-q"])
    code, _, err = run_cli(capsys, prototxt, weights, "--onnx", other)
    assert code == 2
    assert "'data' is 1x3x16x16 but the Caffe net's input 'data' is 1x3x12x12" in err
    # --batch that a fixed-batch ONNX file cannot take is the same kind of misfit.
    code, _, err = run_cli(capsys, prototxt, weights, "--onnx", small[2], "--batch", "3")
    assert code == 2 and "1x3x12x12 but the Caffe net's input 'data' is 3x3x12x12" in err


def test_input_file_of_the_wrong_shape_exits_2_naming_both_shapes(small, tmp_path, capsys):
    prototxt, weights, good = small
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((1, 3, 10, 10), np.float32))
    code, _, err = run_cli(capsys, prototxt, weights, "--onnx", good, "--input", f"data={npy}")
    assert code == 2
    assert "holds 1x3x10x10 but the Caffe net expects 1x3x12x12" in err
    np.save(npy, np.zeros((4, 3, 12, 12), np.float32))
    code, _, err = run_cli(capsys, prototxt, weights, "--input", f"data={npy}")
    assert code == 2 and "pass --batch 4" in err
    code, _, err = run_cli(capsys, prototxt, weights, "--input", f"nosuch={npy}")
    assert code == 2 and "no such input; its inputs are data (1x3x12x12)" in err


def test_unknown_report_format_is_refused_before_any_work(small, tmp_path, capsys):
    prototxt, weights, _ = small
    code, _, err = run_cli(capsys, prototxt, weights, "--report", tmp_path / "r.txt")
    assert code == 2 and "use a .json or .html file name" in err


# ----------------------------------------------------------------------------- real inputs


def test_npy_and_npz_inputs_are_used_as_given(small, tmp_path, capsys):
    prototxt, weights, good = small
    x = np.random.default_rng(5).standard_normal((3, 12, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", other=np.zeros(3), data=x[None])
    for path in (tmp_path / "x.npy", tmp_path / "x.npz"):
        report = caffe2onnx.validate(prototxt, weights, good, inputs={"data": path}, seeds=3)
        assert report.passed, report.summary()
        assert report.inputs["data"]["source"] == str(path)
        assert report.seeds == (0,), "file inputs run once"
    code, out, _ = run_cli(capsys, prototxt, weights, "--input", tmp_path / "x.npy", "--batch", "2")
    assert code == 0, out
    assert "repeated over the batch of 2" in out


def test_image_input_gets_caffe_preprocessing(tmp_path):
    from PIL import Image

    prototxt = write(tmp_path, NET)
    net = load_net(prototxt, random_weights=0)
    rgb = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    mean = [104.0, 117.0, 123.0]
    feeds, sources, _ = build_feeds(
        net,
        {"data": tmp_path / "img.png"},
        seeds=(0,),
        preprocess=Preprocess(mean=parse_mean("104,117,123"), scale=0.017, bgr=True),
    )
    bgr = rgb[:, :, ::-1].transpose(2, 0, 1).astype(np.float64)
    expected = (bgr - np.asarray(mean)[:, None, None]) * 0.017
    np.testing.assert_allclose(feeds[0]["data"][0], expected, rtol=1e-6, atol=1e-5)
    assert sources["data"].endswith("img.png")


def test_image_of_another_size_is_resized_and_validates(small, tmp_path, capsys):
    from PIL import Image

    prototxt, weights, good = small
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "big.png")
    code, out, err = run_cli(
        capsys, prototxt, weights, "--onnx", good, "--input", f"data={tmp_path / 'big.png'}",
        "--mean", "104,117,123", "--scale", "0.01", "--bgr",
    )  # fmt: skip
    assert code == 0, out + err
    assert "resized big.png from 20x30 to 12x12" in out


def test_mean_files_npy_and_binaryproto(tmp_path):
    from caffe2onnx.proto import caffe_pb2

    mean_image = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=4, width=5)
    blob.data.extend(mean_image.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    np.save(tmp_path / "mean.npy", mean_image)
    for name in ("mean.binaryproto", "mean.npy"):
        parsed = parse_mean(str(tmp_path / name))
        np.testing.assert_array_equal(parsed.reshape(3, 4, 5), mean_image)
    # A mean image of another size is reduced to per-channel means (Caffe's classify.py).
    x = np.zeros((1, 3, 2, 2), np.float32)
    out, notes = Preprocess(mean=mean_image).apply(x, "input 'data'")
    np.testing.assert_allclose(out[0, :, 0, 0], -mean_image.reshape(3, -1).mean(axis=1))
    assert "per-channel means" in notes[0]


def test_mean_with_the_wrong_channel_count_exits_2(small, tmp_path, capsys):
    prototxt, weights, _ = small
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 12, 12), np.float32))
    code, _, err = run_cli(capsys, prototxt, weights, "--input", tmp_path / "x.npy", "--mean", "1,2")
    assert code == 2 and "--mean has 2 values but the input has 3 channels" in err


# ----------------------------------------------------------------------------- metrics and progress


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [([1, 2, 3], [2, 4, 6], 1.0), ([1, 0], [0, 1], 0.0), ([1, 1], [-1, -1], -1.0), ([0, 0], [0, 0], 1.0)],
    ids=["parallel", "orthogonal", "opposite", "both_zero"],
)
def test_cosine_similarity(a, b, expected):
    assert math.isclose(cosine_similarity(np.array(a), np.array(b)), expected, abs_tol=1e-12)


def test_progress_callback_counts_every_step(small):
    prototxt, weights, good = small
    net = load_net(prototxt, weights)
    calls = []
    feeds = [{"data": np.zeros((1, 3, 12, 12), np.float32)}] * 2
    report = compare_feeds(
        net, onnx.load(str(good)), feeds, references=("pytorch", "opencv"), prototxt=prototxt,
        caffemodel=weights, progress=lambda done, total, label: calls.append((done, total, label)),
    )  # fmt: skip
    assert report.passed
    assert calls[-1][0] == calls[-1][1] == 2 + 2 * (len(LAYERS) + 2)
    assert {label for *_, label in calls} >= {"conv1", "onnxruntime", "opencv"}


def test_quiet_run_off_a_tty_prints_only_the_verdict(small, capsys):
    prototxt, weights, good = small
    code, out, err = run_cli(capsys, prototxt, weights, "--onnx", good, "-q", "--seeds", "2")
    assert code == 0
    assert out.startswith("PASS") and out.count("\n") == 1
    assert err == "", "no progress bar off a TTY"


# ----------------------------------------------------------------------------- reports


def test_json_and_html_reports(small, tmp_path, capsys):
    prototxt, weights, good = small
    bad = edited(good, tmp_path / "bad.onnx", corrupt_weight("conv2/weight"))
    j, h = tmp_path / "r.json", tmp_path / "r.html"
    code, _, _ = run_cli(
        capsys, prototxt, weights, "--onnx", bad, "--report", j, "--report", h, "--seeds", "2"
    )
    assert code == 1
    data = json.loads(j.read_text())
    assert data["format"] == "caffe2onnx-validation/1"
    assert data["seeds"] == [0, 1] and data["onnx"] == str(bad)
    assert [r["layer"] for r in data["rows"]] == LAYERS
    assert set(data["rows"][0]) >= {
        "layer",
        "type",
        "blob",
        "shape",
        "max_abs",
        "max_rel",
        "cosine",
        "passed",
    }
    page = h.read_text()
    assert page.count('src="data:image/png;base64,') == 1
    assert '<tr class="fail"><td>3</td><td>conv2</td>' in page
    assert "<link" not in page and "<script" not in page, "self-contained"


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install -y chromium)")
def test_html_report_renders_the_table_and_plot_in_headless_chromium(small, tmp_path, capsys):
    from PIL import Image

    from caffe2onnx.report import FAIL_BG, HEADER_BG, SERIES_COLOURS

    prototxt, weights, good = small
    bad = edited(good, tmp_path / "bad.onnx", corrupt_weight("conv2/weight"))
    page = tmp_path / "report.html"
    assert run_cli(capsys, prototxt, weights, "--onnx", bad, "--report", page)[0] == 1
    shot = tmp_path / "shot.png"
    result = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1400",
            f"--screenshot={shot}", page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)

    def rows_with(colour: str, tol: int = 6) -> np.ndarray:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        hit = (np.abs(pixels - rgb).max(axis=2) <= tol).sum(axis=1)
        return np.nonzero(hit > 20)[0]

    header, fail_rows, line = (
        rows_with(HEADER_BG),
        rows_with(FAIL_BG),
        rows_with(SERIES_COLOURS["pytorch"], 40),
    )
    assert header.size, "the table header is on screen"
    assert fail_rows.size, "failing rows (and the FAIL verdict) are highlighted"
    assert line.size, "the plot's error line is on screen"
    assert line.min() < header.min(), "the plot comes before the table"
    assert fail_rows.max() > header.min(), "failing rows are in the table, under its header"


def test_a_net_opencv_cannot_run_exits_2_with_a_hint(tmp_path, capsys):
    prototxt = write(
        tmp_path,
        NET.split("layer {")[0]
        + 'layer { name: "up" type: "Upsample" bottom: "data" top: "up" upsample_param { scale: 2 } }\n',
    )
    code, _, err = run_cli(capsys, prototxt, "--random-weights", "0", "--reference", "opencv")
    assert code == 2
    assert 'Can\'t create layer "up" of type "Upsample"' in err and "--reference pytorch" in err
    assert run_cli(capsys, prototxt, "--random-weights", "0")[0] == 0


def test_readme_validation_example_runs_and_its_table_is_current(tmp_path, capsys, monkeypatch):
    """The README's commands run, pass, and print the layers and blobs the README shows."""
    readme = (SAMPLES.parent / "README.md").read_text()
    section = readme.split("## Validating an ONNX file", 1)[1]
    commands = section.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    shown = section.split("```text\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prototxt").symlink_to(SAMPLES)
    capsys.readouterr()
    for line in commands.strip().splitlines():
        argv = line.split()
        assert argv[0] == "caffe2onnx"
        assert main(argv[1:]) == 0, line
    out = capsys.readouterr().out
    columns = [line.split()[:3] for line in out.splitlines() if line.endswith(" ok")]
    assert columns == [line.split()[:3] for line in shown.splitlines() if line.endswith(" ok")]
    assert out.splitlines()[-1].split(",")[0] == shown.strip().splitlines()[-1].split(",")[0]
    assert (tmp_path / "report.html").is_file()


def test_argmax_near_ties_are_followed_but_wrong_indices_fail():
    """A mask may pick either of two window values equal within the tolerance; nothing else."""
    from caffe2onnx.validation import argmax_near_ties

    x = np.array([[[[1.0, 1.0 + 1e-7], [0.0, -3.0]]]], np.float32)  # one 2x2 plane
    ref = np.array([[[[1.0]]]], np.float32)  # Caffe-style per-plane index of 1+1e-7
    tie = np.array([[[[0.0]]]], np.float32)  # the near-equal neighbour
    wrong = np.array([[[[2.0]]]], np.float32)  # 0.0: not a tie
    assert argmax_near_ties(x, ref, ref, 1e-4, 1e-6) == (0, 0.0)
    count, gap = argmax_near_ties(x, tie, ref, 1e-4, 1e-6)
    assert count == 1 and gap < 1e-6
    assert argmax_near_ties(x, wrong, ref, 1e-4, 1e-6) is None
    assert argmax_near_ties(x, np.array([[[[7.0]]]], np.float32), ref, 1e-4, 1e-6) is None
