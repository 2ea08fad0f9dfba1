"""Every supported opset (13..21) exports a checker-clean model that computes the same thing.

One net exercises every family whose ONNX form depends on the opset (Split, Reduce*, Resize,
Pad, Softmax, ...); it is converted at each opset, checked by onnx.checker with strict shape
inference (inside to_onnx), run in onnxruntime and compared blob by blob with the PyTorch
reference.
"""

from __future__ import annotations

import pytest

from caffe2onnx.onnx_export import MAX_OPSET, MIN_OPSET
from caffe2onnx.validation import compare_net
from tests.helpers import net_text, run_net

KITCHEN_SINK = net_text(
    """
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
      convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
    layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
    layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
    layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
    layer { name: "lrn" type: "LRN" bottom: "conv" top: "lrn" lrn_param { local_size: 3 } }
    layer { name: "lrn_within" type: "LRN" bottom: "conv" top: "lrn_within"
      lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL } }
    layer { name: "pool_max" type: "Pooling" bottom: "lrn" top: "pool_max" top: "pool_mask"
      pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
    layer { name: "pool_ave" type: "Pooling" bottom: "lrn_within" top: "pool_ave"
      pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
    layer { name: "unpool" type: "Upsample" bottom: "pool_max" bottom: "pool_mask" top: "unpool"
      upsample_param { upsample_h: 15 upsample_w: 15 } }
    layer { name: "slice" type: "Slice" bottom: "pool_ave" top: "s1" top: "s2" slice_param { slice_point: 3 } }
    layer { name: "interp" type: "Interp" bottom: "s1" top: "interp" interp_param { height: 16 width: 16 } }
    layer { name: "nearest" type: "Upsample" bottom: "s2" top: "nearest" upsample_param { scale: 2 } }
    layer { name: "cat" type: "Concat" bottom: "interp" bottom: "nearest" top: "cat" }
    layer { name: "up" type: "Deconvolution" bottom: "cat" top: "up"
      convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 } }
    layer { name: "shuffle" type: "PixelShuffle" bottom: "up" top: "shuffle" pixel_shuffle_param { upscale_factor: 2 } }
    layer { name: "crop" type: "Crop" bottom: "unpool" bottom: "lrn" top: "crop" crop_param { offset: 0 } }
    layer { name: "sum" type: "Eltwise" bottom: "crop" bottom: "lrn" top: "sum" eltwise_param { coeff: 1 coeff: -0.5 } }
    layer { name: "mvn" type: "MVN" bottom: "sum" top: "mvn" }
    layer { name: "reduce" type: "Reduction" bottom: "mvn" top: "reduce" reduction_param { operation: MEAN axis: 2 } }
    layer { name: "softmax" type: "Softmax" bottom: "shuffle" top: "softmax" }
    layer { name: "argmax" type: "ArgMax" bottom: "softmax" top: "argmax" argmax_param { axis: 1 } }
    layer { name: "flat" type: "Flatten" bottom: "pool_ave" top: "flat" }
    layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip" inner_product_param { num_output: 5 } }
    layer { name: "prelu" type: "PReLU" bottom: "ip" top: "prelu" }
    """,
    {"data": (2, 3, 15, 15)},
)


@pytest.mark.parametrize("opset", range(MIN_OPSET, MAX_OPSET + 1), ids=lambda o: f"opset{o}")
def test_kitchen_sink_net_at_every_supported_opset(tmp_path, opset):
    run = run_net(tmp_path, KITCHEN_SINK, opset=opset)
    assert run.model.opset_import[0].version == opset
    report = compare_net(run.net, run.model, inputs=run.inputs)
    assert report.passed, report.summary() + "\n" + report.table()
    assert len(report.rows) >= 25, "every blob of the net is compared"
