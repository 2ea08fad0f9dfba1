"""Bring any prototxt layout to one form: declared inputs plus V2 ``LayerParameter``s.

Caffe does the same on load (``UpgradeNetAsNeeded``):

* **V1** (``layers {}`` with an enum ``type``): the enum becomes the V2 type string,
  the per-type ``*_param`` messages are carried over by name, ``param`` strings become
  ``ParamSpec.name`` (weight sharing).
* **V0** (``layers { layer { type: "conv" ... } bottom: top: }``): the flat V0 fields are
  moved into ``convolution_param``/``pooling_param``/...; a ``padding`` layer is removed
  and its ``pad`` moved into the convolution or pooling layer that reads its output.
* **Legacy inputs**: ``input`` with ``input_shape`` or with ``input_dim`` (4 values per
  input) become net inputs, as an ``Input`` layer would declare them.

Nothing here interprets layer semantics; that is the handlers' job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from caffe2onnx.errors import NetDefinitionError
from caffe2onnx.ir import Shape
from caffe2onnx.proto import caffe_pb2

# V1 LayerType enum name -> V2 type string (BVLC UpgradeV1LayerType, plus fork values).
V1_TYPE_NAMES: dict[str, str] = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
    "CROP": "Crop",
    "ELTWISE_ACCURACY": "EltwiseAccuracy",
    "UNPOOLING": "Unpooling",
    "BN": "BN",
    "IMAGE_SEG_DATA": "ImageSegData",
    "INTERP": "Interp",
    "MAT_WRITE": "MatWrite",
    "SEG_ACCURACY": "SegAccuracy",
    "DENSE_CRF": "DenseCRF",
    "ADAPTIVE_BIAS_CHANNEL": "AdaptiveBiasChannel",
    "DOMAIN_TRANSFORM": "DomainTransform",
    "UNIQUE_LABEL": "UniqueLabel",
    "INTERP_LAYER": "Interp",
}

V1_TYPE_NUMBERS: dict[str, int] = {
    V1_TYPE_NAMES[name]: number
    for name, number in caffe_pb2.V1LayerParameter.LayerType.items()
    if name in V1_TYPE_NAMES and V1_TYPE_NAMES[name] and name != "INTERP_LAYER"
}

# V0 type string -> V2 type string (BVLC UpgradeV0LayerType).
V0_TYPE_NAMES: dict[str, str] = {
    "accuracy": "Accuracy",
    "bnll": "BNLL",
    "concat": "Concat",
    "conv": "Convolution",
    "data": "Data",
    "dropout": "Dropout",
    "euclidean_loss": "EuclideanLoss",
    "flatten": "Flatten",
    "hdf5_data": "HDF5Data",
    "hdf5_output": "HDF5Output",
    "im2col": "Im2col",
    "images": "ImageData",
    "infogain_loss": "InfogainLoss",
    "innerproduct": "InnerProduct",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MultinomialLogisticLoss",
    "pool": "Pooling",
    "relu": "ReLU",
    "sigmoid": "Sigmoid",
    "softmax": "Softmax",
    "softmax_loss": "SoftmaxWithLoss",
    "split": "Split",
    "tanh": "TanH",
    "window_data": "WindowData",
    "padding": "padding",
}


@dataclass
class NetSpec:
    """A net in one form: its name, declared inputs and V2 layer messages in file order."""

    name: str
    format: str
    inputs: list[tuple[str, Shape | None]] = field(default_factory=list)
    layers: list[caffe_pb2.LayerParameter] = field(default_factory=list)
    state: caffe_pb2.NetState = field(default_factory=caffe_pb2.NetState)
    notes: list[str] = field(default_factory=list)
    #: the prototxt line of each entry of ``layers`` (None when unknown)
    lines: list[int | None] = field(default_factory=list)

    def line_of(self, layer: caffe_pb2.LayerParameter) -> int | None:
        for candidate, line in zip(self.layers, self.lines):
            if candidate is layer:
                return line
        return None


def upgrade(net: caffe_pb2.NetParameter, source: str = "<string>", lines: list[int] | None = None) -> NetSpec:
    """Return the net with legacy inputs resolved and every layer as a V2 message.

    ``lines`` are the prototxt lines of the ``layer``/``layers`` entries in file order
    (:func:`caffe2onnx.prototxt.layer_lines`); they are carried to ``NetSpec.lines``.
    """
    if net.layer and net.layers:
        raise NetDefinitionError(
            f"{source}: the net mixes 'layer' (current) and 'layers' (V1) entries; "
            "Caffe refuses this too. Use one format."
        )
    is_v0 = any(v1.HasField("layer") for v1 in net.layers)
    spec = NetSpec(name=net.name, format="V0" if is_v0 else ("V1" if net.layers else "V2"), state=net.state)
    spec.inputs = _legacy_inputs(net, source)
    count = len(net.layers) or len(net.layer)
    known: list[int | None] = list(lines or [])
    all_lines = known if len(known) == count else [None] * count
    if net.layers:
        layers = [_upgrade_v1(v1) for v1 in net.layers]
        if is_v0:
            line_by_id = {id(layer): line for layer, line in zip(layers, all_lines)}
            layers = _merge_v0_padding(layers, spec.notes, source)
            all_lines = [line_by_id.get(id(layer)) for layer in layers]
        spec.layers = layers
    else:
        spec.layers = list(net.layer)
    spec.lines = all_lines
    return spec


def _legacy_inputs(net: caffe_pb2.NetParameter, source: str) -> list[tuple[str, Shape | None]]:
    names = list(net.input)
    if not names:
        if net.input_shape or net.input_dim:
            raise NetDefinitionError(f"{source}: input_shape/input_dim are given but no 'input:' names them")
        return []
    if net.input_shape:
        if len(net.input_shape) != len(names):
            raise NetDefinitionError(
                f"{source}: {len(names)} 'input' names but {len(net.input_shape)} "
                "'input_shape' entries; give one shape per input"
            )
        return [(n, tuple(int(d) for d in s.dim)) for n, s in zip(names, net.input_shape)]
    if net.input_dim:
        dims = [int(d) for d in net.input_dim]
        if len(dims) != 4 * len(names):
            raise NetDefinitionError(
                f"{source}: {len(names)} 'input' names need {4 * len(names)} 'input_dim' "
                f"values (N, C, H, W each), found {len(dims)}"
            )
        return [(n, tuple(dims[4 * i : 4 * i + 4])) for i, n in enumerate(names)]
    return [(n, None) for n in names]


_V2_FIELDS = {f.name: f for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields}


def _upgrade_v1(v1: caffe_pb2.V1LayerParameter) -> caffe_pb2.LayerParameter:
    layer = caffe_pb2.LayerParameter()
    if v1.HasField("layer"):
        _upgrade_v0_into(v1.layer, layer)
    if v1.HasField("name"):
        layer.name = v1.name
    if v1.HasField("type"):
        enum_name = caffe_pb2.V1LayerParameter.LayerType.Name(v1.type)
        layer.type = V1_TYPE_NAMES.get(enum_name, enum_name)
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    layer.loss_weight.extend(v1.loss_weight)
    for name in v1.param:
        layer.param.add().name = name
    for descriptor, value in v1.ListFields():
        target = _V2_FIELDS.get(descriptor.name)
        if (
            descriptor.name.endswith("_param")
            and target is not None
            and target.message_type is descriptor.message_type
        ):
            getattr(layer, descriptor.name).CopyFrom(value)
    return layer


def _copy_weighted_fields(v0: caffe_pb2.V0LayerParameter, p) -> None:
    """num_output, bias term and fillers: shared by V0 conv and innerproduct."""
    if v0.HasField("num_output"):
        p.num_output = v0.num_output
    p.bias_term = v0.biasterm
    if v0.HasField("weight_filler"):
        p.weight_filler.CopyFrom(v0.weight_filler)
    if v0.HasField("bias_filler"):
        p.bias_filler.CopyFrom(v0.bias_filler)


def _upgrade_v0_into(v0: caffe_pb2.V0LayerParameter, layer: caffe_pb2.LayerParameter) -> None:
    layer.name = v0.name
    layer.type = V0_TYPE_NAMES.get(v0.type, v0.type)
    if v0.type == "conv":
        p = layer.convolution_param
        _copy_weighted_fields(v0, p)
        if v0.HasField("pad"):
            p.pad.append(v0.pad)
        if v0.HasField("kernelsize"):
            p.kernel_size.append(v0.kernelsize)
        if v0.HasField("group"):
            p.group = v0.group
        if v0.HasField("stride"):
            p.stride.append(v0.stride)
    elif v0.type == "pool":
        p = layer.pooling_param
        p.pool = v0.pool
        if v0.HasField("pad"):
            p.pad = v0.pad
        if v0.HasField("kernelsize"):
            p.kernel_size = v0.kernelsize
        if v0.HasField("stride"):
            p.stride = v0.stride
    elif v0.type == "innerproduct":
        _copy_weighted_fields(v0, layer.inner_product_param)
    elif v0.type == "lrn":
        p = layer.lrn_param
        p.local_size = v0.local_size
        p.alpha = v0.alpha
        p.beta = v0.beta
        p.k = v0.k
    elif v0.type == "dropout":
        layer.dropout_param.dropout_ratio = v0.dropout_ratio
    elif v0.type == "concat":
        layer.concat_param.concat_dim = v0.concat_dim
    elif v0.type == "padding":
        # Kept as a pseudo-layer; merged by _merge_v0_padding.
        layer.convolution_param.pad.append(v0.pad)
    elif v0.type in ("data", "images", "window_data", "hdf5_data"):
        layer.data_param.batch_size = v0.batchsize
        layer.transform_param.crop_size = v0.cropsize


def _merge_v0_padding(
    layers: list[caffe_pb2.LayerParameter], notes: list[str], source: str = "<string>"
) -> list[caffe_pb2.LayerParameter]:
    """Remove V0 ``padding`` layers, moving their pad into the conv/pool that reads them."""
    result: list[caffe_pb2.LayerParameter] = []
    padding: dict[str, tuple[str, int, str]] = {}  # top -> (bottom, pad, layer name)
    for layer in layers:
        if layer.type == "padding":
            if len(layer.bottom) != 1 or len(layer.top) != 1:
                raise NetDefinitionError(
                    f"{source}: V0 padding layer '{layer.name}' needs one bottom and one top"
                )
            padding[layer.top[0]] = (layer.bottom[0], layer.convolution_param.pad[0], layer.name)
            continue
        for i, bottom in enumerate(layer.bottom):
            if bottom not in padding:
                continue
            origin, pad, pad_name = padding[bottom]
            if layer.type == "Convolution":
                del layer.convolution_param.pad[:]
                layer.convolution_param.pad.append(pad)
            elif layer.type == "Pooling":
                layer.pooling_param.pad = pad
            else:
                raise NetDefinitionError(
                    f"{source}: V0 padding layer '{pad_name}' feeds '{layer.name}' ({layer.type}); "
                    "Caffe only merges padding into a convolution or pooling layer"
                )
            layer.bottom[i] = origin
            notes.append(f"merged V0 padding layer '{pad_name}' (pad {pad}) into '{layer.name}'")
        result.append(layer)
    return result
