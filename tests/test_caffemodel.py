"""The schema-less caffemodel decoder and the writer, checked against protobuf's own parser."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2onnx.caffemodel import read_caffemodel, write_caffemodel
from caffe2onnx.errors import ParseError
from caffe2onnx.proto import caffe_pb2

RNG = np.random.default_rng(7)
LAYERS = [
    (
        "conv1",
        "Convolution",
        [RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), RNG.standard_normal(4).astype(np.float32)],
    ),
    ("ip", "InnerProduct", [RNG.standard_normal((5, 12)).astype(np.float32)]),
    (
        "bn",
        "BatchNorm",
        [
            RNG.standard_normal(4).astype(np.float32),
            RNG.random(4).astype(np.float32),
            np.array([2.5], np.float32),
        ],
    ),
]


def _protobuf_blobs(path) -> dict[str, list[np.ndarray]]:
    """Decode with the generated protobuf classes: an independent decoder."""
    net = caffe_pb2.NetParameter()
    net.ParseFromString(path.read_bytes())
    result = {}
    for layer in net.layer:
        blobs = []
        for blob in layer.blobs:
            values = np.array(blob.double_data or blob.data, np.float32)
            if (
                blob.HasField("num")
                or blob.HasField("channels")
                or blob.HasField("height")
                or blob.HasField("width")
            ):
                shape = (blob.num, blob.channels, blob.height, blob.width)
            else:
                shape = tuple(blob.shape.dim)
            blobs.append(values.reshape(shape))
        result[layer.name] = blobs
    for v1 in net.layers:
        source = v1.layer if v1.HasField("layer") else v1
        result[source.name] = [
            np.array(b.double_data or b.data, np.float32).reshape(b.num, b.channels, b.height, b.width)
            for b in source.blobs
        ]
    return result


# V1/V0 files of old Caffe always use the legacy num/channels/height/width blob shape.
ENCODINGS = [
    (layout, style, values)
    for layout in ("V2", "V1", "V0")
    for style in (("shape", "legacy") if layout == "V2" else ("legacy",))
    for values in ("packed", "unpacked", "double")
]


@pytest.mark.parametrize(("layout", "blob_style", "values"), ENCODINGS, ids=["-".join(e) for e in ENCODINGS])
def test_decoder_agrees_with_protobuf_and_with_the_original_arrays(tmp_path, layout, blob_style, values):
    path = tmp_path / "m.caffemodel"
    write_caffemodel(path, LAYERS, "net", layout=layout, blob_style=blob_style, values=values)
    model = read_caffemodel(path)
    reference = _protobuf_blobs(path)
    for name, _, originals in LAYERS:
        decoded = model.blobs[name]
        assert len(decoded) == len(originals)
        for got, expected_pb, original in zip(decoded, reference[name], originals):
            np.testing.assert_array_equal(got, expected_pb)
            np.testing.assert_array_equal(got.reshape(original.shape), original)
    assert model.format == ("V1" if layout in ("V1", "V0") else "V2")


def test_decoded_arrays_are_views_of_the_file_not_copies(tmp_path):
    path = tmp_path / "m.caffemodel"
    write_caffemodel(path, LAYERS, "net")
    blob = read_caffemodel(path).blobs["conv1"][0]
    assert not blob.flags.owndata, "packed floats should be numpy views over the mapped file"


def test_v1_type_enum_values_are_decoded(tmp_path):
    path = tmp_path / "m.caffemodel"
    write_caffemodel(
        path, [("up", "Deconvolution", [np.ones((2, 1, 4, 4), np.float32)])], layout="V1", blob_style="legacy"
    )
    assert read_caffemodel(path).types["up"] == "Deconvolution"


@pytest.mark.parametrize(
    "corruption",
    ["truncated", "bitflip_length", "random_bytes", "empty", "text"],
)
def test_corrupt_files_give_a_parse_error_naming_the_file(tmp_path, corruption):
    path = tmp_path / "bad.caffemodel"
    write_caffemodel(path, LAYERS, "net")
    data = bytearray(path.read_bytes())
    if corruption == "truncated":
        data = data[: len(data) // 2]
    elif corruption == "bitflip_length":
        data[5] ^= 0x7F  # inside the first layer's length varint
    elif corruption == "random_bytes":
        data = bytearray(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif corruption == "empty":
        data = bytearray()
    else:
        data = bytearray(b'name: "LeNet"\nlayer { name: "conv1" }\n')
    path.write_bytes(bytes(data))
    with pytest.raises(ParseError, match="bad.caffemodel"):
        read_caffemodel(path)


def test_blob_claiming_more_values_than_it_holds_is_refused_without_allocating(tmp_path):
    from caffe2onnx import wire

    blob = wire.len_field(7, wire.packed_varint_field(1, [10**6, 10**6])) + wire.len_field(5, b"\0" * 8)
    layer = wire.string_field(1, "x") + wire.len_field(7, blob)
    path = tmp_path / "huge.caffemodel"
    path.write_bytes(wire.len_field(100, layer))
    with pytest.raises(ParseError, match="1000000000000 values"):
        read_caffemodel(path)
