"""The ``caffe2onnx`` command line: convert | validate | inspect | make-weights.

Exit codes: 0 success, 1 numeric mismatch, 2 bad input or unsupported layers,
3 internal error (a bug: please report it). Errors are one clear message; ``--debug``
shows the traceback. This module, not the library, configures logging.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from caffe2onnx.errors import Caffe2OnnxError

log = logging.getLogger("caffe2onnx")

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


class UsageError(Caffe2OnnxError):
    pass


# ----------------------------------------------------------------------------- argument types


def _input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not sep or not name or not shape:
        raise argparse.ArgumentTypeError(f"expected NAME=N,C,H,W (e.g. data=1,3,224,224), got {text!r}")
    return name, shape


def _python_layer(text: str) -> tuple[str, str]:
    key, sep, layer_type = text.partition("=")
    if not sep or "." not in key or not layer_type:
        raise argparse.ArgumentTypeError(
            f"expected module.Class=Type (e.g. spatial_dropout.SpatialDropoutLayer=Dropout), got {text!r}"
        )
    return key, layer_type


def _input_file(text: str) -> tuple[str | None, str]:
    name, sep, path = text.partition("=")
    if not sep:
        return None, text
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE (e.g. data=cat.png), got {text!r}")
    return name, path


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _layer_type(text: str) -> tuple[str, str]:
    name, sep, layer_type = text.rpartition("=")
    if not sep or not name or not layer_type:
        raise argparse.ArgumentTypeError(
            f"expected LAYER=TYPE (e.g. layer12-maxpool=DarknetPooling), got {text!r}"
        )
    return name, layer_type


def _outputs(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _add_net_arguments(parser: argparse.ArgumentParser, weights: bool = True) -> None:
    parser.add_argument("prototxt", help="the net definition (.prototxt)")
    if weights:
        parser.add_argument("caffemodel", nargs="?", help="trained weights (.caffemodel)")
    parser.add_argument(
        "--input-shape",
        type=_input_shape,
        action="append",
        default=[],
        metavar="NAME=N,C,H,W",
        help="shape of a net input or data layer top (repeatable)",
    )
    parser.add_argument(
        "--python-layer",
        type=_python_layer,
        action="append",
        default=[],
        metavar="MODULE.CLASS=TYPE",
        help="convert a Python layer with the handler of TYPE (repeatable)",
    )
    parser.add_argument(
        "--layer-type",
        type=_layer_type,
        action="append",
        default=[],
        metavar="LAYER=TYPE",
        help="convert the named layer with the handler of TYPE, e.g. layer12-maxpool=DarknetPooling (repeatable)",
    )
    parser.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar="NAME",
        help="a NetState stage for the layers' include/exclude rules (repeatable; phase is TEST)",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE|FILE.py",
        help="load custom layer handlers from a module or file (repeatable; see README)",
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")


def build_parser() -> argparse.ArgumentParser:
    from caffe2onnx import __version__
    from caffe2onnx.onnx_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
    from caffe2onnx.validation import DEFAULT_ATOL, DEFAULT_RTOL

    parser = argparse.ArgumentParser(
        prog="caffe2onnx", description="Convert Caffe networks to ONNX and prove them equal."
    )
    parser.add_argument("--version", action="version", version=f"caffe2onnx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser("convert", help="convert a Caffe net to ONNX")
    _add_net_arguments(convert)
    convert.add_argument("-o", "--output", help="the ONNX file to write (default: <prototxt>.onnx)")
    convert.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET}"
    )
    convert.add_argument(
        "--random-weights", type=int, metavar="SEED", help="seeded random weights for layers without weights"
    )
    convert.add_argument("--outputs", type=_outputs, metavar="BLOB,...", help="graph outputs (cuts the net)")
    convert.add_argument(
        "--validate", action="store_true", help="validate the result against the PyTorch reference"
    )
    convert.add_argument("--rtol", type=float, default=DEFAULT_RTOL)
    convert.add_argument("--atol", type=float, default=DEFAULT_ATOL)
    convert.add_argument(
        "--no-optimize",
        action="store_true",
        help="keep the graph 1:1 with the Caffe layers (no BatchNorm folding, identities kept)",
    )
    convert.add_argument(
        "--external-data",
        action="store_true",
        help="write the weights to <output>.data beside the model (automatic above 2 GB)",
    )
    _add_common(convert)

    validate = sub.add_parser(
        "validate",
        help="prove an ONNX model (from any converter) computes what the Caffe net does, blob by blob",
        description=(
            "Run the Caffe net's reference and the ONNX model in onnxruntime on the same inputs and "
            "compare every blob whose name exists in both (inputs and outputs pair by name, else by "
            "order). Exit 0 when all agree, 1 on a mismatch (naming the first diverging layer), "
            "2 on inputs that do not fit."
        ),
    )
    _add_net_arguments(validate)
    validate.add_argument("--onnx", help="the ONNX file to check, from any tool (default: convert in memory)")
    validate.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="opset when converting in memory")
    validate.add_argument(
        "--random-weights", type=int, metavar="SEED", help="seeded random weights for layers without weights"
    )
    validate.add_argument("--outputs", type=_outputs, metavar="BLOB,...", help="net outputs (cuts the net)")
    validate.add_argument(
        "--input",
        type=_input_file,
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="real data for a net input: .npy, .npz or an image (repeatable; NAME may be left out "
        "when the net has one input); other inputs are seeded random normal",
    )
    validate.add_argument(
        "--mean",
        metavar="B,G,R|FILE",
        help="Caffe-style mean subtracted from file inputs: per-channel values or a .npy/.binaryproto file",
    )
    validate.add_argument(
        "--scale", type=float, default=1.0, help="multiply file inputs by this after the mean (Caffe's scale)"
    )
    validate.add_argument(
        "--bgr", action="store_true", help="reverse the channels of file inputs (RGB images for BGR nets)"
    )
    validate.add_argument(
        "--reference",
        choices=("pytorch", "opencv", "both"),
        default="pytorch",
        help="what runs the Caffe net: our PyTorch reference, OpenCV's Caffe importer (the "
        "caffe2onnx[opencv] extra) or both, which must all agree (default: pytorch)",
    )
    validate.add_argument(
        "--rtol", type=float, default=DEFAULT_RTOL, help="relative tolerance (of the blob's max)"
    )
    validate.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="absolute tolerance")
    validate.add_argument("--batch", type=_positive, metavar="N", help="batch size of the inputs")
    validate.add_argument(
        "--seeds", type=_positive, default=1, metavar="K", help="compare on K random input sets (worst kept)"
    )
    validate.add_argument("--seed", type=int, default=0, help="seed of the first random input set")
    validate.add_argument(
        "--report",
        action="append",
        default=[],
        metavar="FILE.json|FILE.html",
        help="also write the report as JSON or as a self-contained HTML page (repeatable)",
    )
    _add_common(validate)

    inspect = sub.add_parser("inspect", help="list layers, shapes, parameters and problems")
    _add_net_arguments(inspect)
    _add_common(inspect)

    make = sub.add_parser("make-weights", help="write seeded random weights as a caffemodel")
    _add_net_arguments(make, weights=False)
    make.add_argument("-o", "--output", required=True, help="the .caffemodel to write")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--layout", choices=("V2", "V1"), default="V2", help="caffemodel layout")
    _add_common(make)
    return parser


# ----------------------------------------------------------------------------- commands


def _load_options(args: argparse.Namespace) -> dict:
    options = {
        "input_shapes": dict(args.input_shape),
        "python_layers": dict(args.python_layer),
        "layer_types": dict(args.layer_type),
        "stages": list(args.stage),
    }
    if getattr(args, "random_weights", None) is not None:
        options["random_weights"] = args.random_weights
    if getattr(args, "outputs", None):
        options["outputs"] = args.outputs
    return options


def _print_report(report, quiet: bool) -> int:
    if not quiet:
        print(report.table())
        for note in report.notes:
            print(f"note: {note}")
    print(report.summary())
    return EXIT_OK if report.passed else EXIT_MISMATCH


def cmd_convert(args: argparse.Namespace) -> int:
    from caffe2onnx.atomic import check_output_dir
    from caffe2onnx.onnx_export import save_model
    from caffe2onnx.parser import load_net

    output = args.output or os.path.splitext(os.path.basename(args.prototxt))[0] + ".onnx"
    check_output_dir(output)
    net = load_net(args.prototxt, args.caffemodel, **_load_options(args))
    for note in net.notes:
        log.info("note: %s", note)
    saved = save_model(
        net,
        output,
        args.opset,
        optimize=not args.no_optimize,
        external_data=True if args.external_data else None,
        progress=not args.quiet,
    )
    log.info(
        "wrote %s%s: %d Caffe layers (%d after optimization), %d parameters, opset %d, outputs %s",
        saved.path,
        f" (+ weights in {saved.data_path})" if saved.data_path else "",
        len(net.layers),
        len(saved.net.layers),
        net.parameter_count(),
        args.opset,
        ", ".join(net.outputs),
    )
    if args.validate:
        import onnx

        from caffe2onnx.validation import compare_net

        model = onnx.load(str(saved.path), load_external_data=False)
        report = compare_net(
            net,
            model,
            rtol=args.rtol,
            atol=args.atol,
            model_dir=os.path.dirname(os.path.abspath(saved.path)),
        )
        return _print_report(report, args.quiet)
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from caffe2onnx.inputs import Preprocess, ValidationInputError, parse_mean
    from caffe2onnx.report import check_report_path, write_report
    from caffe2onnx.validation import validate_files

    for path in args.report:
        check_report_path(path)
    files: dict[str | None, str] = {}
    for name, path in args.input:
        if name in files:
            raise ValidationInputError(f"--input {name or path}: given twice")
        files[name] = path
    preprocess = Preprocess(mean=parse_mean(args.mean) if args.mean else None, scale=args.scale, bgr=args.bgr)
    if preprocess.active and not files:
        log.warning(
            "--mean/--scale/--bgr apply to --input files only; the random inputs are left as they are"
        )
    with _progress_bar(disable=args.quiet or not sys.stderr.isatty()) as progress:
        report = validate_files(
            args.prototxt,
            args.caffemodel,
            args.onnx,
            rtol=args.rtol,
            atol=args.atol,
            seed=args.seed,
            seeds=args.seeds,
            batch=args.batch,
            inputs=files,
            preprocess=preprocess,
            reference=args.reference,
            opset=args.opset,
            progress=progress,
            **_load_options(args),
        )
    code = _print_report(report, args.quiet)
    for path in args.report:
        write_report(report, path)
        log.info("wrote %s", path)
    return code


@contextlib.contextmanager
def _progress_bar(disable: bool):
    """A tqdm bar fed by the library's ``progress(done, total, label)`` callback."""
    if disable:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=0, unit="step", file=sys.stderr, delay=0.5, leave=False, dynamic_ncols=True)

    def update(done: int, total: int, label: str) -> None:
        if bar.total != total:
            bar.total = total
        bar.set_description_str(label[:30], refresh=False)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def cmd_inspect(args: argparse.Namespace) -> int:
    from caffe2onnx.inspect import inspect_net

    text, ok = inspect_net(args.prototxt, args.caffemodel, **_load_options(args))
    print(text)
    return EXIT_OK if ok else EXIT_BAD_INPUT


def cmd_make_weights(args: argparse.Namespace) -> int:
    from caffe2onnx.make_weights import make_weights

    net = make_weights(
        args.prototxt,
        args.output,
        seed=args.seed,
        layout=args.layout,
        **_load_options(args),
    )
    log.info("wrote %s for net '%s' (seed %d)", args.output, net.name, args.seed)
    return EXIT_OK


class _MessageFormatter(logging.Formatter):
    """Plain messages; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


COMMANDS = {
    "convert": cmd_convert,
    "validate": cmd_validate,
    "inspect": cmd_inspect,
    "make-weights": cmd_make_weights,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MessageFormatter("%(message)s"))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, handlers=[handler])
    try:
        from caffe2onnx.plugins import load_plugins

        load_plugins(args.plugin)  # --plugin modules and installed caffe2onnx.plugins entry points
        return COMMANDS[args.command](args)
    except Caffe2OnnxError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in caffe2onnx; run again with --debug and report the traceback.",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
