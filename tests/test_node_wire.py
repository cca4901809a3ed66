"""Wire codec and request validation, without a server: fast, no model."""

from __future__ import annotations

import math
import subprocess
import sys

import msgpack
import numpy as np
import openpi_client.msgpack_numpy as openpi
import pytest
from foresight_client import wire
from foresight_client.protocol import (
    ErrorCode,
    MetaRequest,
    ModelGeometry,
    NodeError,
    PredictRequest,
    parse_request,
)

GEOMETRY = ModelGeometry(height=64, width=64, num_frames=8, context_frames=1)


def valid_request(**changes: object) -> dict:
    request = {"method": "predict", "id": 7, "frames": np.zeros((1, 48, 80, 3), np.uint8), "instruction": "push the block"}
    request.update(changes)
    return request


@pytest.mark.parametrize("dtype", ["uint8", "<f4", ">i2", "bool", "<u8", "<M8[s]"])
def test_roundtrip_and_openpi_interop(dtype: str) -> None:
    array = (np.arange(24) % 2).astype(dtype).reshape(2, 3, 4)
    message = {"a": array, "s": np.float32(1.5), "n": [1, "x", b"y"], "e": np.zeros((0, 3), np.uint8)}
    for encode, decode in [(wire.packb, wire.unpackb), (openpi.packb, wire.unpackb), (wire.packb, openpi.unpackb)]:
        out = decode(encode(message))
        np.testing.assert_array_equal(out["a"], array)
        assert out["a"].dtype == array.dtype and out["e"].shape == (0, 3)
        assert out["s"] == np.float32(1.5) and out["s"].dtype == np.float32
        assert out["n"] == [1, "x", b"y"]


def test_non_contiguous_arrays_are_sent_in_logical_order() -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4).T
    np.testing.assert_array_equal(wire.unpackb(wire.packb(array)), array)


@pytest.mark.parametrize("bad", [np.array([object()]), np.zeros(2, complex), np.zeros(2, "i4,i4"), np.complex64(1)])
def test_refuses_to_send_unsafe_dtypes(bad: object) -> None:
    with pytest.raises(ValueError):
        wire.packb({"x": bad})


def array_map(dtype: object, shape: object, data: object = b"") -> bytes:
    return msgpack.packb({b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape})


@pytest.mark.parametrize(
    "body, code",
    [
        (b"", ErrorCode.BAD_MSGPACK),
        (b"\xc1", ErrorCode.BAD_MSGPACK),
        (b"\x91" * 5000, ErrorCode.BAD_MSGPACK),  # nesting deeper than msgpack allows
        (msgpack.packb(1) + b"extra", ErrorCode.BAD_MSGPACK),
        (array_map("|O", [1], b"\0" * 8), ErrorCode.BAD_DTYPE),  # object arrays from bytes would be pointers
        (array_map("|V8", [1], b"\0" * 8), ErrorCode.BAD_DTYPE),
        (array_map("i4,i4", [1], b"\0" * 8), ErrorCode.BAD_DTYPE),
        (array_map("<c16", [1], b"\0" * 16), ErrorCode.BAD_DTYPE),
        (array_map("S0", [1]), ErrorCode.BAD_DTYPE),
        (array_map("nonsense", [1]), ErrorCode.BAD_DTYPE),
        (array_map(5, [1]), ErrorCode.BAD_DTYPE),
        (array_map("<f4", [3], b"abc"), ErrorCode.BAD_SHAPE),
        (array_map("<f4", [-1], b""), ErrorCode.BAD_SHAPE),
        (array_map("<f4", "3", b""), ErrorCode.BAD_SHAPE),
        (array_map("<f4", [2**40, 2**40], b""), ErrorCode.BAD_SHAPE),
        (array_map("<f4", [1], "text"), ErrorCode.BAD_TYPE),
        (msgpack.packb({b"__npgeneric__": True, b"data": "x", b"dtype": "<f8"}), ErrorCode.BAD_DTYPE),
        (msgpack.packb({b"__npgeneric__": True, b"data": 1, b"dtype": "|O"}), ErrorCode.BAD_DTYPE),
    ],
)
def test_malformed_messages_raise_codes(body: bytes, code: str) -> None:
    with pytest.raises(NodeError) as info:
        wire.unpackb(body)
    assert info.value.code == code


def test_text_keys_are_accepted_too() -> None:
    body = msgpack.packb({"__ndarray__": True, "data": b"\x01\x02", "dtype": "|u1", "shape": [2]})
    np.testing.assert_array_equal(wire.unpackb(body), [1, 2])


def test_client_side_imports_no_model_code() -> None:
    code = (
        "import sys, foresight.node, foresight_client.client, foresight_client.wire\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'cv2', 'sim_bridge.common.imaging') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_parse_valid_requests() -> None:
    request = parse_request(
        valid_request(instruction=["a", "b"], seed=3, steps=2, num_frames=4, guidance={"frame": 1, "text": 2.5}), GEOMETRY
    )
    assert isinstance(request, PredictRequest)
    assert request.instructions == ("a", "b") and request.seeds == (3, 4)
    assert (request.steps, request.num_frames, request.guidance_frame, request.guidance_text) == (2, 4, 1.0, 2.5)
    assert parse_request({"method": "info"}, GEOMETRY) == MetaRequest(id=None, method="info")
    jpeg_list = parse_request(valid_request(frames=[b"\xff\xd8"], seed=[5], instruction=["x"]), GEOMETRY)
    assert jpeg_list.frames == (b"\xff\xd8",) and jpeg_list.seeds == (5,)


@pytest.mark.parametrize(
    "changes, code, quoted",
    [
        ({"method": 3}, ErrorCode.BAD_TYPE, "3"),
        ({"method": "dance"}, ErrorCode.UNKNOWN_METHOD, "'dance'"),
        ({"frames": np.zeros((1, 8, 8, 3), np.float32)}, ErrorCode.BAD_DTYPE, "float32"),
        ({"frames": np.zeros((8, 8, 3), np.uint8)}, ErrorCode.BAD_SHAPE, "(8, 8, 3)"),
        ({"frames": np.zeros((2, 8, 8, 3), np.uint8)}, ErrorCode.BAD_FRAME_COUNT, "2"),
        ({"frames": np.zeros((1, 5000, 8, 3), np.uint8)}, ErrorCode.TOO_LARGE, "5000"),
        ({"frames": [b"a", b"b"]}, ErrorCode.BAD_FRAME_COUNT, "2"),
        ({"frames": ["a"]}, ErrorCode.BAD_TYPE, "'a'"),
        ({"instruction": ""}, ErrorCode.BAD_INSTRUCTION, "''"),
        ({"instruction": []}, ErrorCode.BAD_INSTRUCTION, "0"),
        ({"instruction": ["ok"] * 17}, ErrorCode.BAD_INSTRUCTION, "17"),
        ({"instruction": "x" * 513}, ErrorCode.BAD_INSTRUCTION, "513"),
        ({"instruction": [1]}, ErrorCode.BAD_TYPE, "1"),
        ({"steps": 0}, ErrorCode.BAD_NUMBER, "0"),
        ({"steps": 2.0}, ErrorCode.BAD_TYPE, "2.0"),
        ({"steps": True}, ErrorCode.BAD_TYPE, "True"),
        ({"num_frames": 9}, ErrorCode.BAD_NUMBER, "9"),
        ({"num_frames": 1}, ErrorCode.BAD_NUMBER, "1"),
        ({"guidance": {"frame": math.nan}}, ErrorCode.BAD_NUMBER, "nan"),
        ({"guidance": {"text": math.inf}}, ErrorCode.BAD_NUMBER, "inf"),
        ({"guidance": {"text": -1}}, ErrorCode.BAD_NUMBER, "-1"),
        ({"guidance": {"txt": 1}}, ErrorCode.BAD_TYPE, "txt"),
        ({"guidance": 2}, ErrorCode.BAD_TYPE, "2"),
        ({"seed": -1}, ErrorCode.BAD_NUMBER, "-1"),
        ({"seed": [1, 2]}, ErrorCode.BAD_SHAPE, "2"),
        ({"deadline": math.nan}, ErrorCode.BAD_NUMBER, "nan"),
        ({"encoding": "png"}, ErrorCode.BAD_TYPE, "'png'"),
    ],
)
def test_parse_refuses_with_code_and_quotes_the_value(changes: dict, code: str, quoted: str) -> None:
    with pytest.raises(NodeError) as info:
        parse_request(valid_request(**changes), GEOMETRY)
    assert info.value.code == code
    assert quoted in info.value.message


@pytest.mark.parametrize("missing", ["method", "frames", "instruction"])
def test_missing_fields(missing: str) -> None:
    request = valid_request()
    del request[missing]
    with pytest.raises(NodeError) as info:
        parse_request(request, GEOMETRY)
    assert info.value.code == ErrorCode.MISSING_FIELD and missing in info.value.message


def test_not_a_map() -> None:
    with pytest.raises(NodeError) as info:
        parse_request([1, 2], GEOMETRY)
    assert info.value.code == ErrorCode.NOT_A_MAP


def array_map(shape: object, data: bytes = b"", dtype: str = "|u1") -> dict:
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


@pytest.mark.parametrize("shape,words", [
    ([0, 2**64 - 1, 1, 3], "spans more than"),  # issue 35: numpy's reshape raised ValueError and ended the node
    ([0] + [2**40] * 3, "spans more than"),
    ([0, -(2**63)], "must not be negative"),
    ([2**31, 0], "spans more than"),
    ([0, 1, 2, 3, 4], "at most 4 dimensions"),
    ([True, 1, 1, 3], "integer sizes"),
    ([1.0, 1, 1, 3], "integer sizes"),
    ("1,1,1,3", "integer sizes"),
])
def test_shapes_are_checked_before_numpy_sees_them(shape: object, words: str) -> None:
    message = msgpack.packb({"frames": array_map(shape)})
    with pytest.raises(NodeError) as caught:
        wire.decode_fields(wire.unpack_plain(message), {"frames": 4}, wire.DecodeLimits(max_bin_bytes=2**26))
    assert caught.value.code == ErrorCode.BAD_SHAPE and words in caught.value.message and "'frames'" in caught.value.message


def test_zero_sized_arrays_within_bounds_still_decode() -> None:
    decoded = wire.decode_fields({"frames": array_map([0, 2**20, 4, 3])}, {"frames": 4}, wire.DecodeLimits(max_bin_bytes=2**26))
    assert decoded["frames"].shape == (0, 2**20, 4, 3)


def test_fields_that_take_no_arrays_refuse_them_by_rank() -> None:
    with pytest.raises(NodeError) as caught:
        wire.decode_fields({"seed": array_map([2], b"\0\0")}, {"seed": 0})
    assert caught.value.code == ErrorCode.BAD_SHAPE and "'seed' takes arrays of at most 0 dimensions" in caught.value.message
    assert wire.decode_fields({"seed": array_map([], b"\x05")}, {"seed": 0})["seed"] == 5


@pytest.mark.parametrize("dtype", ["(99999999999)u1", "U99999999999", "M8[zz]", "i4" * 8])
def test_any_dtype_parse_failure_is_bad_dtype(dtype: str) -> None:
    with pytest.raises(NodeError) as caught:
        wire.unpackb(msgpack.packb(array_map([1], b"\0", dtype)))
    assert caught.value.code in (ErrorCode.BAD_DTYPE, ErrorCode.BAD_SHAPE)
