"""``python -m caffe2onnx``: the same as the ``caffe2onnx`` command."""

import sys

from caffe2onnx.cli import main

sys.exit(main())
