#!/usr/bin/env bash
# Regenerate caffe2onnx/proto/caffe_pb2.py from caffe2onnx/proto/caffe.proto.
# Needs grpcio-tools (pip install grpcio-tools), which bundles protoc.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -I caffe2onnx/proto --python_out=caffe2onnx/proto caffe2onnx/proto/caffe.proto
echo "wrote caffe2onnx/proto/caffe_pb2.py"
