"""Whole classification nets from ../shared/corpus: seeded caffemodels, ONNX vs OpenCV vs torch.

Each net gets a make-weights caffemodel (the real binary path), is converted, run in
onnxruntime and compared with OpenCV 4.x's forward of the *same prototxt + caffemodel*
(an independent Caffe implementation) and, blob by blob, with the PyTorch reference.
Errors are relative to each blob's largest magnitude (see caffe2onnx.validation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from caffe2onnx.make_weights import make_weights
from caffe2onnx.onnx_export import to_onnx
from caffe2onnx.parser import load_net
from caffe2onnx.validation import compare_arrays, compare_net, run_onnx
from tests.helpers import CORPUS, opencv_forward


@dataclass(frozen=True)
class CorpusNet:
    file: str
    input_shapes: dict | None = None


# Batch sizes are set to 1 or 2: the spatial sizes stay the nets' real ones.
CLASSIFICATION_NETS = {
    "alexnet": CorpusNet("bvlc_alexnet.deploy.prototxt"),
    "alexnet_input_shape": CorpusNet("bvlc_alexnet_inputshape.deploy.prototxt"),
    "alexnet_v1": CorpusNet("bvlc_alexnet_v1format.deploy.prototxt"),
    "caffenet": CorpusNet("bvlc_caffenet.deploy.prototxt"),
    "googlenet": CorpusNet("bvlc_googlenet.deploy.prototxt"),
    "googlenet_input_dim": CorpusNet("bvlc_googlenet_inputdim_newformat.deploy.prototxt"),
    "rcnn": CorpusNet("bvlc_rcnn_ilsvrc13.deploy.prototxt", {"data": (1, 3, 227, 227)}),
    "caffenet_full_conv": CorpusNet("caffenet_full_conv.deploy.prototxt"),
    "resnet50": CorpusNet("resnet50.deploy.prototxt"),
    "squeezenet_1_1": CorpusNet("squeezenet_v1.1.deploy.prototxt", {"data": (1, 3, 227, 227)}),
    "mobilenet_v1": CorpusNet("mobilenet_v1.deploy.prototxt"),
    "mobilenet_v2": CorpusNet("mobilenet_v2.deploy.prototxt"),
    "vgg16_v1": CorpusNet("vgg16_ilsvrc_v1format.deploy.prototxt", {"data": (1, 3, 224, 224)}),
    "lenet": CorpusNet("lenet_mnist.deploy.prototxt"),
    "lenet_v1": CorpusNet("lenet_mnist_v1format.deploy.prototxt"),
    "lenet_v0": CorpusNet("lenet_mnist_v0format.deploy.prototxt"),
    "cifar10": CorpusNet("cifar10_full.deploy.prototxt"),
    "mnist_siamese": CorpusNet("mnist_siamese.deploy.prototxt", {"data": (2, 1, 28, 28)}),
    "mtcnn_pnet": CorpusNet("mtcnn_pnet_det1.deploy.prototxt"),
}


def tolerance(num_layers: int) -> float:
    return 1e-3 if num_layers > 50 else 1e-4


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("corpus_weights")


@pytest.mark.parametrize("key", CLASSIFICATION_NETS, ids=list(CLASSIFICATION_NETS))
def test_classification_net_matches_opencv_and_torch(key, weights_dir):
    spec = CLASSIFICATION_NETS[key]
    prototxt = CORPUS / spec.file
    caffemodel = weights_dir / f"{key}.caffemodel"
    make_weights(prototxt, caffemodel, seed=1, input_shapes=spec.input_shapes)
    net = load_net(prototxt, caffemodel, input_shapes=spec.input_shapes)
    model = to_onnx(net)
    rtol = tolerance(len(net.layers))
    rng = np.random.default_rng(0)
    inputs = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in net.inputs}

    # OpenCV runs the original prototxt; its batch size comes from the input we feed it.
    # The outputs, and the logits before a final Softmax (random weights can saturate the
    # Softmax to one-hot, which would hide differences in everything before it).
    producers = net.producer()
    compared = list(net.outputs)
    for out in net.outputs:
        if producers[out].type == "Softmax":
            compared.append(producers[out].bottoms[0])
    opencv_layers = [producers[t].caffe_name or producers[t].name for t in compared]
    reference = opencv_forward(prototxt, caffemodel, inputs, opencv_layers)
    ours = run_onnx(model, inputs, compared)
    for out, layer_name in zip(compared, opencv_layers):
        max_abs, max_rel, passed = compare_arrays(
            ours[out], reference[layer_name].reshape(ours[out].shape), rtol, 1e-6
        )
        assert passed, (
            f"{key}: output '{out}' vs OpenCV: max abs {max_abs:.3g}, max rel {max_rel:.3g} > {rtol}"
        )

    report = compare_net(net, model, inputs=inputs, rtol=rtol)
    assert report.passed, report.summary()
