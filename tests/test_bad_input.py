"""Every bad input gets a clear error: one table, run through the command line.

Each case asserts exit code 2, message fragments naming the file, line or layer and what
to do, no traceback (without ``--debug``), no output file and no ``*.part`` leftover in
the output directory, and a bounded run time. Cases marked ``capped`` run in a
subprocess whose address space is capped at 1 GiB: absurd sizes must be refused
before anything big is allocated.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from caffe2onnx import wire
from caffe2onnx.caffemodel import write_caffemodel
from caffe2onnx.cli import main
from caffe2onnx.make_weights import make_weights

HEAD = 'name: "bad"\ninput: "data"\ninput_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
CONV = (
    'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"\n'
    "  convolution_param { num_output: 2 kernel_size: 3 } }\n"
)
RELU = 'layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }\n'
NET = HEAD + CONV + RELU  # conv is on line 4, relu on line 6
CONV2 = (
    'layer { name: "conv2" type: "Convolution" bottom: "conv" top: "conv2"\n'
    '  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "xavier" } } }\n'
)
CAP_BYTES = 1 << 30
SECONDS = 60

ModelMaker = Callable[[Path, Path], Path]


def layer(text: str) -> str:
    return HEAD + text + "\n"


# ----------------------------------------------------------------------------- caffemodels


def trained(tmp_path: Path, prototxt: Path) -> Path:
    path = tmp_path / "trained.caffemodel"
    make_weights(prototxt, path, seed=0)
    return path


def blobs(*layers: tuple[str, str, list[tuple[int, ...]]]) -> ModelMaker:
    def make(tmp_path: Path, prototxt: Path) -> Path:
        path = tmp_path / "weights.caffemodel"
        write_caffemodel(path, [(n, t, [np.zeros(s, np.float32) for s in shapes]) for n, t, shapes in layers])
        return path

    return make


def corrupted(how: str) -> ModelMaker:
    def make(tmp_path: Path, prototxt: Path) -> Path:
        path = trained(tmp_path, prototxt)
        data = bytearray(path.read_bytes())
        if how == "truncated":
            data = data[: len(data) * 2 // 3]
        elif how == "bitflip":  # the length varint of the first layer now claims ~16 KiB
            at = data.index(b"\xa2\x06") + 2
            data[at : at + 2] = b"\xff\x7f"
        elif how == "random":
            data = bytearray(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        elif how == "empty":
            data = bytearray()
        elif how == "text":
            data = bytearray(prototxt.read_bytes())
        path.write_bytes(bytes(data))
        return path

    return make


def huge_blob(tmp_path: Path, prototxt: Path) -> Path:
    """A blob declaring 10^12 values (4 TB of float32) but holding two."""
    blob = wire.len_field(7, wire.packed_varint_field(1, [10**6, 10**6])) + wire.len_field(5, b"\0" * 8)
    layer_message = (
        wire.string_field(1, "conv") + wire.string_field(2, "Convolution") + wire.len_field(7, blob)
    )
    path = tmp_path / "huge.caffemodel"
    path.write_bytes(wire.len_field(100, layer_message))
    return path


def swapped(tmp_path: Path, prototxt: Path) -> Path:
    """The caffemodel given as the prototxt (the arguments swapped)."""
    model = trained(tmp_path, prototxt)
    prototxt.write_bytes(model.read_bytes())
    return model


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    id: str
    prototxt: str
    expect: tuple[str, ...]  # fragments of the message; {prototxt} and {caffemodel} are filled in
    caffemodel: ModelMaker | None = None
    args: tuple[str, ...] = ("--random-weights", "0")
    command: str = "convert"
    output: str | None = "out/model.onnx"  # relative to tmp_path
    capped: bool = False  # run in a subprocess with a 1 GiB address space
    setup: Callable[[Path, pytest.MonkeyPatch], None] | None = None


def _not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root may write anywhere, so creating a file in the output directory is made to fail
    # the way a read-only directory fails for other users.
    real_mkstemp = tempfile.mkstemp
    target = str(tmp_path / "out")

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and os.path.abspath(str(dir)) == target:
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def _parent_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "out" / "afile").write_text("not a directory")


CASES = [
    # --- prototxt syntax and schema
    Case(
        "syntax_error_file_line_col",
        NET.replace('type: "ReLU"', 'type "ReLU"'),
        ("{prototxt}:6:", 'Expected ":"', 'type "ReLU"'),
    ),
    Case(
        "unknown_field",
        NET.replace("kernel_size: 3", "kernel_size: 3 frobnicate: 2"),
        ("{prototxt}:5:", "unknown field 'frobnicate' in ConvolutionParameter", "fix or remove it"),
    ),
    Case(
        "unknown_param_block_of_a_fork",
        layer('layer { name: "m" type: "Mish" bottom: "data" top: "m" mish_param { beta: 1 } }'),
        ("{prototxt}:4:", "unknown field 'mish_param' in LayerParameter", "plugin"),
    ),
    Case(
        "template_placeholder",
        NET.replace("num_output: 2", "num_output: ${NUM_LABELS}"),
        ("{prototxt}:5:", "unresolved template placeholder ${NUM_LABELS}", "this prototxt is a template"),
    ),
    Case(
        "bare_word_where_a_number_goes",
        NET.replace("num_output: 2", "num_output: NUM_LABELS"),
        ("{prototxt}:5:", "a number is expected here, got 'NUM_LABELS'", "placeholder of a template"),
    ),
    Case(
        "enum_value_unknown",
        layer(
            'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAXX kernel_size: 2 } }'
        ),
        ("{prototxt}:4:", "'MAXX' is not a valid value", "valid values: MAX, AVE, STOCHASTIC"),
    ),
    Case(
        "negative_unsigned_value",
        NET.replace("kernel_size: 3", "kernel_size: -3"),
        ("{prototxt}:5:", "Value out of range: -3", "cannot be negative"),
    ),
    Case("empty_prototxt", "\n\n", ("{prototxt}", "the prototxt is empty")),
    Case("prototxt_missing", "", ("missing.prototxt", "cannot read prototxt", "No such file")),
    Case("caffemodel_given_as_prototxt", NET, ("{prototxt}", "binary file", "swap"), caffemodel=swapped),
    Case(
        "mixed_layer_and_layers",
        NET + 'layers { name: "old" type: RELU bottom: "conv" top: "old" }\n',
        ("{prototxt}", "mixes 'layer' (current) and 'layers' (V1)"),
    ),
    # --- layer types
    Case(
        "unknown_layer_types_all_listed",
        NET
        + 'layer { name: "f1" type: "Foo" bottom: "conv" top: "f1" }\n'
        + 'layer { name: "b1" type: "Bar" bottom: "f1" top: "b1" }\n'
        + 'layer { name: "f2" type: "Foo" bottom: "b1" top: "f2" }\n',
        ("{prototxt}", "2 unsupported layer type(s)", "Bar: b1", "Foo: f1, f2", "--plugin"),
    ),
    Case(
        "misspelled_layer_type",
        NET.replace('type: "ReLU"', 'type: "Relu"'),
        ("Relu: relu", "Did you mean 'ReLU'"),
    ),
    Case(
        "python_layer_without_mapping",
        NET
        + 'layer { name: "py" type: "Python" bottom: "conv" top: "py"\n'
        + '  python_param { module: "mymod" layer: "MyLayer" } }\n',
        ("Python (mymod.MyLayer): py", "--python-layer module.Class=Type", "--plugin"),
    ),
    Case(
        "python_layer_mapped_to_unknown_type",
        NET
        + 'layer { name: "py" type: "Python" bottom: "conv" top: "py"\n'
        + '  python_param { module: "mymod" layer: "MyLayer" } }\n',
        ("Nope: py",),
        args=("--random-weights", "0", "--python-layer", "mymod.MyLayer=Nope"),
    ),
    # --- wiring
    Case(
        "undefined_bottom",
        NET + 'layer { name: "r2" type: "ReLU" bottom: "cnov" top: "r2" }\n',
        (
            "{prototxt}:7:",
            "layer 'r2' (ReLU) reads blob 'cnov', which no layer produces",
            "did you mean 'conv'",
        ),
    ),
    Case(
        "bottom_produced_only_later",
        HEAD
        + 'layer { name: "late" type: "ReLU" bottom: "early" top: "late" }\n'
        + 'layer { name: "make" type: "Sigmoid" bottom: "data" top: "early" }\n',
        ("{prototxt}:4:", "only produced later, by layer 'make' (line 5)", "file order", "move that layer"),
    ),
    Case(
        "self_loop",
        layer('layer { name: "loop" type: "ReLU" bottom: "x" top: "x" }'),
        ("{prototxt}:4:", "layer 'loop' (ReLU) reads blob 'x'", "cannot read its own output (a loop)"),
    ),
    Case(
        "cycle",
        HEAD
        + 'layer { name: "a" type: "ReLU" bottom: "c" top: "b" }\n'
        + 'layer { name: "b" type: "Sigmoid" bottom: "b" top: "c" }\n',
        ("{prototxt}:4:", "the layers form a cycle (a -> b -> a)"),
    ),
    Case(
        "same_top_twice_in_one_layer",
        layer('layer { name: "s" type: "Split" bottom: "data" top: "x" top: "x" }'),
        ("{prototxt}:4:", "layer 's' (Split) lists the same top twice"),
    ),
    Case(
        "duplicate_layer_names_with_weights",
        HEAD
        + CONV
        + CONV.replace('bottom: "data" top: "conv"', 'bottom: "conv" top: "conv_b"').replace(
            "kernel_size: 3", "kernel_size: 1"
        ),
        ("2 layers are named 'conv' and take weights", "(line 4)", "(line 6)", "ambiguous"),
        caffemodel=blobs(("conv", "Convolution", [(2, 3, 3, 3), (2,)])),
        args=(),
    ),
    Case(
        "input_declared_twice",
        NET + 'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 } } }\n',
        ("{prototxt}:7:", "input 'data' is declared twice"),
    ),
    Case("input_shape_unknown", NET.replace(HEAD, 'input: "data"\n'), ("--input-shape data=",)),
    Case(
        "input_shape_flag_names_no_input",
        NET,
        ("--input-shape names images", "its inputs are: data"),
        args=("--random-weights", "0", "--input-shape", "images=1,3,8,8"),
    ),
    Case(
        "outputs_flag_names_unknown_blob",
        NET,
        ("--outputs names unknown blob(s) nope",),
        args=("--random-weights", "0", "--outputs", "nope"),
    ),
    Case(
        "reads_a_blob_of_a_dropped_layer",
        NET + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "data" top: "loss" }\n'
        'layer { name: "r" type: "ReLU" bottom: "loss" top: "r" }\n',
        ("{prototxt}:8:", "only the dropped layer 'loss' produces", "--outputs"),
    ),
    # --- parameters and shapes
    Case(
        "zero_kernel",
        NET.replace("kernel_size: 3", "kernel_size: 0"),
        ("{prototxt}:4:", "kernel must be positive"),
    ),
    Case(
        "zero_stride",
        layer(
            'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { kernel_size: 2 stride: 0 } }'
        ),
        ("{prototxt}:4:", "layer 'p' (Pooling): stride must be positive, got [0, 0]"),
    ),
    Case(
        "zero_input_dim",
        NET.replace("input_dim: 8 input_dim: 8", "input_dim: 0 input_dim: 8"),
        ("{prototxt}", "input 'data' has shape [1, 3, 0, 8]", ">= 1"),
    ),
    Case(
        "kernel_larger_than_input",
        NET.replace("kernel_size: 3", "kernel_size: 30"),
        ("{prototxt}:4:", "layer 'conv' (Convolution)", "the input is too small"),
    ),
    Case(
        "group_not_dividing_channels",
        NET.replace("kernel_size: 3", "kernel_size: 3 group: 2"),
        ("{prototxt}:4:", "input channels 3 are not divisible by group 2"),
    ),
    Case(
        "group_not_dividing_num_output",
        NET.replace("num_output: 2", "num_output: 4").replace("kernel_size: 3", "kernel_size: 3 group: 3"),
        ("{prototxt}:4:", "num_output 4 is not divisible by group 3"),
    ),
    Case(
        "crop_offset_out_of_range",
        HEAD
        + 'input: "ref"\ninput_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4\n'
        + 'layer { name: "crop" type: "Crop" bottom: "data" bottom: "ref" top: "crop" crop_param { offset: 5 } }\n',
        ("{prototxt}:6:", "layer 'crop' (Crop): crop out of bounds on axis 2", "offset 5"),
    ),
    Case(
        "crop_offsets_count",
        HEAD
        + 'input: "ref"\ninput_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4\n'
        + 'layer { name: "crop" type: "Crop" bottom: "data" bottom: "ref" top: "crop"\n'
        + "  crop_param { axis: 1 offset: 0 offset: 1 } }\n",
        ("{prototxt}:6:", "2 offsets for 3 cropped axes"),
    ),
    Case(
        "wrong_number_of_bottoms",
        layer('layer { name: "crop" type: "Crop" bottom: "data" top: "crop" }'),
        ("{prototxt}:4:", "layer 'crop' (Crop): has 1 bottom(s); this layer type takes 2"),
    ),
    # --- caffemodels
    Case(
        "missing_blobs",
        NET + CONV2,
        ("1 layer(s) have no blobs in the caffemodel {caffemodel}", "conv2 (Convolution): filler 'xavier'"),
        caffemodel=blobs(("conv", "Convolution", [(2, 3, 3, 3), (2,)])),
        args=(),
    ),
    Case(
        "extra_blobs",
        NET,
        ("{prototxt}:4:", "layer 'conv' (Convolution)", "has 3 blob(s)", "needs 2"),
        caffemodel=blobs(("conv", "Convolution", [(2, 3, 3, 3), (2,), (2,)])),
        args=(),
    ),
    Case(
        "blob_count_mismatch",
        NET,
        ("layer 'conv' (Convolution)", "has 1 blob(s)", "needs 2", "bias_term"),
        caffemodel=blobs(("conv", "Convolution", [(2, 3, 3, 3)])),
        args=(),
    ),
    Case(
        "blob_shape_mismatch",
        NET,
        ("{prototxt}:4:", "layer 'conv' (Convolution)", "[2, 3, 5, 5]", "[2, 3, 3, 3]"),
        caffemodel=blobs(("conv", "Convolution", [(2, 3, 5, 5), (2,)])),
        args=(),
    ),
    Case(
        "caffemodel_of_another_net",
        NET,
        ("{caffemodel}", "none of the caffemodel's layer names (fc6", "another net"),
        caffemodel=blobs(("fc6", "InnerProduct", [(4, 3)])),
        args=(),
    ),
    Case("caffemodel_truncated", NET, ("{caffemodel}", "truncated or corrupt"), corrupted("truncated"), ()),
    Case(
        "caffemodel_bit_flipped",
        NET,
        ("{caffemodel}", "truncated or corrupt", "claims"),
        corrupted("bitflip"),
        (),
    ),
    Case("caffemodel_random_bytes", NET, ("{caffemodel}",), corrupted("random"), ()),
    Case("caffemodel_empty", NET, ("{caffemodel}", "empty (0 bytes)"), corrupted("empty"), ()),
    Case("prototxt_given_as_caffemodel", NET, ("{caffemodel}", "text file", "swap"), corrupted("text"), ()),
    # --- absurd sizes: refused before any allocation, under a 1 GiB address-space cap
    Case(
        "absurd_input_200000x200000",
        NET.replace("input_dim: 8 input_dim: 8", "input_dim: 200000 input_dim: 200000"),
        ("{prototxt}", "input 'data' has shape [1, 3, 200000, 200000] = 120000000000 elements"),
        capped=True,
    ),
    Case(
        "absurd_parameter_blob",
        'input: "data"\ninput_dim: 1 input_dim: 1000000 input_dim: 1 input_dim: 1\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 1000000 } }\n',
        ("{prototxt}:3:", "layer 'ip' (InnerProduct)", "blob 'weight' has shape [1000000, 1000000]"),
        capped=True,
    ),
    Case(
        "absurd_parameter_blob_make_weights",
        'input: "data"\ninput_dim: 1 input_dim: 1000000 input_dim: 1 input_dim: 1\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 1000000 } }\n',
        ("{prototxt}:3:", "blob 'weight' has shape [1000000, 1000000]"),
        args=(),
        command="make-weights",
        output="out/model.caffemodel",
        capped=True,
    ),
    Case(
        "absurd_top_from_deconvolution",
        layer(
            'layer { name: "up" type: "Deconvolution" bottom: "data" top: "up"\n'
            "  convolution_param { num_output: 64 kernel_size: 4 stride: 100000 } }"
        ),
        ("{prototxt}:4:", "layer 'up' (Deconvolution)", "top 'up' has shape"),
        capped=True,
    ),
    Case(
        "caffemodel_blob_claims_10e12_values",
        NET,
        ("{caffemodel}", "1000000000000 values"),
        caffemodel=huge_blob,
        args=(),
        capped=True,
    ),
    Case(
        "bilinear_filler_on_a_non_square_kernel",
        layer(
            'layer { name: "up" type: "Deconvolution" bottom: "data" top: "up" convolution_param {\n'
            '  num_output: 3 group: 3 kernel_h: 4 kernel_w: 6 stride: 2 bias_term: false weight_filler { type: "bilinear" } } }'
        ),
        ("{prototxt}:4: layer 'up' (Deconvolution)", "square kernel", "[3, 1, 4, 6]"),
        args=(),
    ),
    Case(
        "absurd_prior_box_size",
        'name: "bad"\ninput: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
        'input: "image" input_dim: 1 input_dim: 3 input_dim: 32 input_dim: 32\n'
        'layer { name: "prior" type: "PriorBox" bottom: "data" bottom: "image" top: "prior"\n'
        "  prior_box_param { min_size: 2 max_size: 1e30 } }\n",
        ("{prototxt}:4: layer 'prior' (PriorBox)", "box sizes must be below"),
    ),
    Case(
        "data_layer_left_out_by_stage_rules",
        'name: "bad"\n'
        'layer { name: "data" type: "Input" top: "data" include { phase: TEST stage: "test-on-test" }\n'
        "  input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n"
        'layer { name: "relu" type: "ReLU" bottom: "data" top: "relu" }\n',
        ("{prototxt}:4: layer 'relu' (ReLU) reads blob 'data'", "include/exclude rules", "test-on-test"),
    ),
    # --- output files
    Case("output_directory_missing", NET, ("does not exist", "create it first"), output="out/no/such/m.onnx"),
    Case("output_parent_is_a_file", NET, ("afile",), output="out/afile/m.onnx", setup=_parent_is_a_file),
    Case("output_directory_not_writable", NET, ("is not writable",), setup=_not_writable),
    Case("output_is_a_directory", NET, ("is a directory",), output="out"),
    # --- other commands
    Case(
        "validate_with_corrupt_caffemodel",
        NET,
        ("{caffemodel}", "truncated or corrupt"),
        caffemodel=corrupted("truncated"),
        args=("--report", "out/report.json"),
        command="validate",
        output=None,
    ),
    Case(
        "make_weights_of_a_broken_net",
        NET.replace("kernel_size: 3", "kernel_size: 0"),
        ("{prototxt}:4:", "kernel must be positive"),
        args=(),
        command="make-weights",
        output="out/model.caffemodel",
    ),
    Case(
        "inspect_lists_every_problem",
        NET
        + 'layer { name: "f" type: "Foo" bottom: "conv" top: "f" }\n'
        + 'layer { name: "after_f" type: "ReLU" bottom: "f" top: "after_f" }\n'
        + 'layer { name: "big" type: "Convolution" bottom: "conv" top: "big" convolution_param { num_output: 2 kernel_size: 9 } }\n'
        + 'layer { name: "p" type: "Pooling" bottom: "conv" top: "p" pooling_param { kernel_size: 2 stride: 0 } }\n'
        + 'layer { name: "late" type: "ReLU" bottom: "later" top: "late" }\n',
        (
            "problems (4)",
            "Foo: f",
            "{prototxt}:9: layer 'big' (Convolution)",
            "{prototxt}:10: layer 'p' (Pooling): stride must be positive",
            "{prototxt}:11: layer 'late' (ReLU) reads blob 'later'",
            "skipped 1 layer(s) whose input shapes are unknown because of 'f': after_f",
        ),
        args=(),
        command="inspect",
        output=None,
    ),
]


def _command(case: Case, tmp_path: Path) -> tuple[list[str], Path, Path | None]:
    prototxt = tmp_path / ("missing.prototxt" if case.id == "prototxt_missing" else "net.prototxt")
    if case.id != "prototxt_missing":
        prototxt.write_text(case.prototxt)
    caffemodel = case.caffemodel(tmp_path, prototxt) if case.caffemodel else None
    argv = [case.command, str(prototxt)]
    if caffemodel is not None:
        argv.append(str(caffemodel))
    argv += [str(tmp_path / a) if a.startswith("out/") else a for a in case.args]
    if case.output is not None:
        argv += ["-o", str(tmp_path / case.output)]
    return argv, prototxt, caffemodel


def _run_capped(argv: list[str]) -> tuple[int, str, str]:
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({CAP_BYTES}, resource.RLIM_INFINITY))\n"
        "from caffe2onnx.cli import main\n"
        f"raise SystemExit(main({argv!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=SECONDS,
        cwd=Path(__file__).parents[1],
    )
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_a_clear_message_and_no_output(case, tmp_path, capsys, monkeypatch):
    (tmp_path / "out").mkdir()
    if case.setup:
        case.setup(tmp_path, monkeypatch)
    argv, prototxt, caffemodel = _command(case, tmp_path)
    before = set((tmp_path / "out").rglob("*"))
    start = time.monotonic()
    if case.capped:
        code, out, err = _run_capped(argv)
    else:
        code = main(argv)
        out, err = capsys.readouterr()
    elapsed = time.monotonic() - start
    text = err + out
    assert code == 2, f"exit {code}\n{text}"
    for fragment in case.expect:
        fragment = fragment.replace("{prototxt}", str(prototxt)).replace("{caffemodel}", str(caffemodel))
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    assert "Traceback" not in text
    assert "internal error" not in text
    assert set((tmp_path / "out").rglob("*")) == before, "an output file or a *.part file was left behind"
    assert elapsed < SECONDS


@pytest.mark.parametrize("case_id", ["syntax_error_file_line_col", "zero_kernel", "caffemodel_truncated"])
def test_debug_shows_the_traceback(case_id, tmp_path, capsys):
    case = next(c for c in CASES if c.id == case_id)
    (tmp_path / "out").mkdir()
    argv, _, _ = _command(case, tmp_path)
    assert main([*argv, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert not list((tmp_path / "out").iterdir())


def test_two_writers_of_one_blob_are_allowed_with_a_note(tmp_path):
    """Caffe allows a second layer to write a blob without reading it (a new version)."""
    from caffe2onnx.parser import load_net

    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(
        HEAD
        + 'layer { name: "a" type: "ReLU" bottom: "data" top: "x" }\n'
        + 'layer { name: "b" type: "Sigmoid" bottom: "data" top: "x" }\n'
        + 'layer { name: "c" type: "TanH" bottom: "x" top: "y" }\n'
    )
    net = load_net(prototxt)
    assert net.layer("c").bottoms == ("x",) and net.layer("b").tops == ("x",)
    assert any("written by layer 'a' and again by layer 'b'" in note for note in net.notes)


def test_duplicate_layer_names_without_caffemodel_blobs_are_a_note(tmp_path):
    from caffe2onnx.parser import load_net

    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(
        HEAD
        + CONV
        + CONV.replace('bottom: "data" top: "conv"', 'bottom: "conv" top: "conv_b"').replace(
            "kernel_size: 3", "kernel_size: 1"
        )
    )
    net = load_net(prototxt, random_weights=0)
    assert [layer.name for layer in net.layers] == ["conv", "conv_1"]
    assert any("2 layers named 'conv' take weights" in note for note in net.notes)


def test_outputs_cut_the_net_before_unsupported_and_broken_layers(tmp_path, capsys):
    """What the unsupported-layers message suggests: --outputs leaves those layers out."""
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(
        NET
        + 'layer { name: "det" type: "YoloDetection" bottom: "conv" top: "det" }\n'
        + 'layer { name: "bad" type: "Pooling" bottom: "conv" top: "p" pooling_param { stride: 0 } }\n'
        + 'layer { name: "r" type: "ReLU" bottom: "nowhere" top: "r" }\n'
    )
    out = tmp_path / "m.onnx"
    argv = ["convert", str(prototxt), "--random-weights", "0", "-o", str(out)]
    assert main(argv) == 2
    assert "YoloDetection: det" in capsys.readouterr().err
    assert main([*argv, "--outputs", "conv"]) == 0
    assert out.exists()
    from caffe2onnx.parser import load_net

    net = load_net(prototxt, random_weights=0, outputs=["conv"])
    assert [layer.name for layer in net.layers] == ["conv", "relu"]
    assert any("left out 3 layer(s)" in note for note in net.notes)
