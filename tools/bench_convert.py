#!/usr/bin/env python
"""Benchmark conversion speed, memory and inference latency on VGG16- and FCN-8s-size models.

    python tools/bench_convert.py [--models vgg16,fcn8s] [--runs 3] [--threads N] [--workdir DIR]

For each model: seeded weights are made with make-weights (a real ~550 MB caffemodel),
the page cache is warmed by reading it once, then three programs run ``--runs`` times
each, every run in a fresh child process that reports its own time and peak RSS:

* I/O floor: copy the caffemodel (``shutil.copyfile``);
* naive floor: read the caffemodel's bytes, wrap them with
  ``onnx.numpy_helper.from_array``, ``onnx.save`` (what converters building tensors
  from Python data pay at least);
* caffe2onnx: ``load_net`` + ``save_model(optimize=True)`` (what ``caffe2onnx convert``
  does), also recording whether torch got imported.

Times are measured inside the children around the work (module imports excluded, the
same for all three); the whole process's wall time is shown too. Before each run the
previous output is deleted and ``os.sync()`` flushes dirty pages, so no run is throttled
by the writeback of the one before. Ratios use the medians. Peak
RSS is the child's ``ru_maxrss`` (interpreter and imports included).

Latency: onnxruntime (default session options) running our ONNX against OpenCV 4.x
running the original prototxt and caffemodel (``cv2.dnn.readNetFromCaffe``), same
input, same thread count (``--threads``, default 1: the least noisy comparison), each
engine in its own process; the engines alternate for ``--latency-rounds`` rounds of
warm-up plus timed inferences, so a change of machine load hits both alike; the ratio
uses the medians. Their outputs are compared, to be sure both compute the same thing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"


@dataclass(frozen=True)
class BenchModel:
    prototxt: str
    input_shape: tuple[int, ...]
    output: str  # the blob compared between onnxruntime and OpenCV
    latency_runs: int  # timed inferences per round
    # The targets are set for the VGG16- and FCN-8s-size models; others are shown for reference.
    has_targets: bool = True


MODELS = {
    "vgg16": BenchModel("vgg16_ilsvrc_v1format.deploy.prototxt", (1, 3, 224, 224), "prob", 5),
    "fcn8s": BenchModel("fcn8s_pascal.deploy.prototxt", (1, 3, 500, 500), "score", 2),
    "resnet50": BenchModel("resnet50.deploy.prototxt", (1, 3, 224, 224), "fc1000", 10, has_targets=False),
}
TARGETS = {
    "convert / naive floor": 0.5,
    "convert / I/O floor": 5.0,
    "peak RSS / model size": 2.0,
    "onnxruntime / OpenCV latency": 1.0,
}


def meets_target(ratio_name: str, value: float) -> bool:
    return value <= TARGETS[ratio_name]


# ----------------------------------------------------------------------------- children


def _peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM (reset by exec, unlike ru_maxrss, which
    keeps the parent's peak from before the exec), else ru_maxrss."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child_io(args) -> dict:
    start = time.perf_counter()
    shutil.copyfile(args.caffemodel, args.output)
    return {"seconds": time.perf_counter() - start, "rss": _peak_rss()}


def child_naive(args) -> dict:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    start = time.perf_counter()
    with open(args.caffemodel, "rb") as handle:
        data = handle.read()
    tensor = numpy_helper.from_array(np.frombuffer(data, dtype=np.uint8), "weights")
    model = helper.make_model(helper.make_graph([], "naive", [], [], [tensor]))
    onnx.save(model, args.output)
    return {"seconds": time.perf_counter() - start, "rss": _peak_rss()}


def child_ours(args) -> dict:
    from caffe2onnx.layers.registry import default_registry
    from caffe2onnx.onnx_export import save_model
    from caffe2onnx.parser import load_net

    default_registry()  # imports the handler modules (import time, like onnx's for the floor)
    start = time.perf_counter()
    # The compared blob is the graph's output (ResNet's logits, not its saturated Softmax).
    net = load_net(args.prototxt, args.caffemodel, input_shapes={"data": args.shape}, outputs=[args.blob])
    saved = save_model(net, args.output, optimize=True)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rss": _peak_rss(),
        "torch_imported": "torch" in sys.modules,
        "onnx_bytes": saved.size,
        "parameters": net.parameter_count(),
    }


def _input(shape):
    import numpy as np

    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _timed_runs(run, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def child_ort(args) -> dict:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(args.output, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: _input(args.shape)}
    out = [args.blob]
    times = _timed_runs(lambda: session.run(out, feed), args.warmup, args.latency_runs)
    np.save(args.result, session.run(out, feed)[0])
    return {"seconds": statistics.median(times), "runs": times}


def child_opencv(args) -> dict:
    import cv2
    import numpy as np

    cv2.setNumThreads(args.threads)
    net = cv2.dnn.readNetFromCaffe(args.prototxt, args.caffemodel)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    x = _input(args.shape)

    def run():
        net.setInput(x)
        return net.forward(args.blob)

    times = _timed_runs(run, args.warmup, args.latency_runs)
    np.save(args.result, run())
    return {"seconds": statistics.median(times), "runs": times, "opencv": cv2.__version__}


CHILDREN = {
    "io": child_io,
    "naive": child_naive,
    "ours": child_ours,
    "ort": child_ort,
    "opencv": child_opencv,
}


def run_child(kind: str, **options) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind]
    for key, value in options.items():
        if key == "shape":
            value = ",".join(map(str, value))
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{result.stderr}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["wall"] = wall
    return report


# ----------------------------------------------------------------------------- parent


def _remove(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            path.unlink()


def _warm(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(64 << 20):
            pass


def _median(reports: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in reports)


def bench_model(name: str, model: BenchModel, workdir: Path, args) -> dict:
    from caffe2onnx.make_weights import make_weights

    prototxt = CORPUS / model.prototxt
    caffemodel = workdir / f"{name}.caffemodel"
    made = None
    if not caffemodel.exists():
        start = time.perf_counter()
        make_weights(prototxt, caffemodel, input_shapes={"data": model.input_shape})
        made = time.perf_counter() - start
    size = caffemodel.stat().st_size
    _warm(caffemodel)
    paths = {
        "io": workdir / f"{name}.copy",
        "naive": workdir / f"{name}.naive.onnx",
        "ours": workdir / f"{name}.onnx",
    }
    reports: dict[str, list[dict]] = {kind: [] for kind in paths}
    for _ in range(args.runs):
        for kind, output in paths.items():
            _remove(output)  # every run writes a new file (replacing one costs extra)
            os.sync()  # and starts with no dirty pages of the previous run to be throttled by
            reports[kind].append(
                run_child(
                    kind,
                    prototxt=prototxt,
                    caffemodel=caffemodel,
                    output=output,
                    shape=model.input_shape,
                    blob=model.output,
                )
            )
    latency: dict[str, list[float]] = {"ort": [], "opencv": []}
    results = {kind: workdir / f"{name}.{kind}.npy" for kind in latency}
    for _ in range(args.latency_rounds):  # alternate the engines: load changes hit both alike
        for kind in latency:
            report = run_child(
                kind,
                prototxt=prototxt,
                caffemodel=caffemodel,
                output=paths["ours"],
                shape=model.input_shape,
                blob=model.output,
                threads=args.threads,
                warmup=args.warmup,
                latency_runs=args.latency_runs or model.latency_runs,
                result=results[kind],
            )
            latency[kind].extend(report["runs"])
            opencv_version = report.get("opencv", "")
    import numpy as np

    ours_out, cv_out = np.load(results["ort"]), np.load(results["opencv"])
    agreement = float(np.abs(ours_out - cv_out).max() / max(float(np.abs(cv_out).max()), 1e-30))
    for path in [*paths.values(), *results.values()]:
        if path != paths["ours"] or not args.keep:
            _remove(path)
    ours, naive, io = (_median(reports[k], "seconds") for k in ("ours", "naive", "io"))
    return {
        "model": name,
        "prototxt": model.prototxt,
        "parameters": reports["ours"][0]["parameters"],
        "caffemodel_bytes": size,
        "make_weights_seconds": made,
        "convert_seconds": ours,
        "naive_seconds": naive,
        "io_seconds": io,
        "convert_process_seconds": _median(reports["ours"], "wall"),
        "naive_process_seconds": _median(reports["naive"], "wall"),
        "io_process_seconds": _median(reports["io"], "wall"),
        "convert_rss": max(r["rss"] for r in reports["ours"]),
        "naive_rss": max(r["rss"] for r in reports["naive"]),
        "io_rss": max(r["rss"] for r in reports["io"]),
        "torch_imported": any(r["torch_imported"] for r in reports["ours"]),
        "ort_ms": statistics.median(latency["ort"]) * 1e3,
        "opencv_ms": statistics.median(latency["opencv"]) * 1e3,
        "latency_runs": len(latency["ort"]),
        "opencv_version": opencv_version,
        "ort_vs_opencv_max_rel_diff": agreement,
        "ratios": {
            "convert / naive floor": ours / naive,
            "convert / I/O floor": ours / io,
            "peak RSS / model size": max(r["rss"] for r in reports["ours"]) / size,
            "onnxruntime / OpenCV latency": statistics.median(latency["ort"])
            / statistics.median(latency["opencv"]),
        },
        "naive_rss_ratio": max(r["rss"] for r in reports["naive"]) / size,
        "has_targets": model.has_targets,
    }


def print_report(row: dict, args) -> None:
    mb = 1 << 20
    print(
        f"\n== {row['model']} ({row['prototxt']}): {row['parameters'] / 1e6:.1f} M parameters, "
        f"caffemodel {row['caffemodel_bytes'] / mb:.0f} MiB"
    )
    if row["make_weights_seconds"] is not None:
        print(f"  make-weights                  {row['make_weights_seconds']:8.2f} s")
    print(
        f"  I/O floor (copy the file)     {row['io_seconds']:8.2f} s   (process {row['io_process_seconds']:.2f} s)"
        f"   peak RSS {row['io_rss'] / mb:7.0f} MiB"
    )
    print(
        f"  naive floor (from_array+save) {row['naive_seconds']:8.2f} s   (process {row['naive_process_seconds']:.2f} s)"
        f"   peak RSS {row['naive_rss'] / mb:7.0f} MiB = {row['naive_rss_ratio']:.2f} x model"
    )
    print(
        f"  caffe2onnx convert            {row['convert_seconds']:8.2f} s   (process {row['convert_process_seconds']:.2f} s)"
        f"   peak RSS {row['convert_rss'] / mb:7.0f} MiB   torch imported: {row['torch_imported']}"
    )
    print(
        f"  latency ({args.threads} thread(s), median of {row['latency_runs']})  onnxruntime {row['ort_ms']:.1f} ms, "
        f"OpenCV {row['opencv_version']} {row['opencv_ms']:.1f} ms "
        f"(outputs agree to {row['ort_vs_opencv_max_rel_diff']:.1e} rel)"
    )
    for name, value in row["ratios"].items():
        target = TARGETS[name]
        met = meets_target(name, value)
        if row["has_targets"]:
            verdict = f"target <= {target:g}: {'ok' if met else 'MISSED'}"
        else:
            verdict = f"reference model, no target; <= {target:g}: {'yes' if met else 'no'}"
        print(f"  {name:30s} {value:8.3f}   ({verdict})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="vgg16,fcn8s", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--runs", type=int, default=3, help="runs of each conversion program (median)")
    parser.add_argument("--threads", type=int, default=1, help="inference threads of both engines")
    parser.add_argument("--warmup", type=int, default=1, help="untimed inferences per round")
    parser.add_argument("--latency-rounds", type=int, default=3, help="alternating rounds per engine")
    parser.add_argument("--latency-runs", type=int, help="timed inferences per round (default: per model)")
    parser.add_argument("--workdir", type=Path, help="where to keep the caffemodels (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the converted ONNX files")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    # Internal: run one measured program in this (child) process.
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    for option in ("prototxt", "caffemodel", "output", "blob", "result"):
        parser.add_argument(f"--{option}", help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=lambda s: tuple(int(d) for d in s.split(",")), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return 0

    sys.path.insert(0, str(ROOT))
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="caffe2onnx-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"caffe2onnx conversion benchmark: {os.cpu_count()} CPU(s), runs={args.runs}, work dir {workdir}")
    rows = []
    try:
        for name in names:
            row = bench_model(name, MODELS[name], workdir, args)
            print_report(row, args)
            rows.append(row)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    missed = [
        (row["model"], name)
        for row in rows
        if row["has_targets"]
        for name, value in row["ratios"].items()
        if not meets_target(name, value)
    ] + [(row["model"], "torch imported") for row in rows if row["torch_imported"]]
    print("\nall targets met" if not missed else f"\ntargets missed: {missed}")
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
