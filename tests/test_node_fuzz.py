"""Malformed messages thrown at a live node: each gets an error reply, the node never dies.

Every generated request is invalid before the model is reached, so this is fast; the run's one
live node (tests/conftest.py) answers a valid request at the end, so it survived.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import msgpack
import numpy as np
import pytest
import zmq
from foresight_client import wire
from foresight_client.protocol import ErrorCode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

N, K = 8, 1  # tiny-random: clip length and context frames
REPLY_TIMEOUT_MS = 10_000  # validation replies; generous because CI machines are shared
CODES = {value for key, value in vars(ErrorCode).items() if key.isupper()}
INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what msgpack can carry
FUZZ = settings(max_examples=1000, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def socket(live_node) -> zmq.Socket:
    """The run's one live node (tests/conftest.py): tiny-random, 1 MiB messages at most."""
    return live_node.socket


def exchange_reply(sock: zmq.Socket, timeout_ms: int = REPLY_TIMEOUT_MS) -> dict:
    assert sock.poll(timeout_ms), "node gave no reply"
    *envelope, body = sock.recv_multipart()
    assert envelope in ([], [b""])  # a DEALER that sent REQ's empty delimiter gets it back
    return wire.unpackb(body)


def assert_error_reply(sock: zmq.Socket, parts: list[bytes]) -> dict:
    sock.send_multipart(parts)
    reply = exchange_reply(sock)
    assert reply["ok"] is False and reply["error"]["code"] in CODES, reply
    assert isinstance(reply["error"]["message"], str)
    return reply


def base() -> dict:
    return {"method": "predict", "id": 1, "frames": np.zeros((K, 20, 20, 3), np.uint8), "instruction": "push"}


def real_jpeg() -> bytes:
    return cv2.imencode(".jpg", np.full((20, 20, 3), 128, np.uint8))[1].tobytes()


JPEG = real_jpeg()
SOS = JPEG.index(b"\xff\xda")

bad_numbers = st.one_of(st.just(math.nan), st.just(math.inf), st.just(-math.inf), st.floats(max_value=-1e-3),
                        st.floats(min_value=1e6, allow_infinity=False))
not_int = st.one_of(st.floats(), st.text(max_size=5), st.booleans(), st.lists(st.integers(INT_MIN, INT_MAX), max_size=2), st.none().map(lambda _: {}))
bad_dtype_array = st.sampled_from(["float32", "int16", "uint16", "int8", "float64", "bool"]).map(
    lambda dtype: np.zeros((K, 4, 4, 3), dtype))
bad_shape_array = st.sampled_from([(K, 4, 4), (K, 4, 4, 4), (K, 0, 4, 3), (K, 4, 4, 3, 1), (4, 3), (K, 4097, 1, 3)]).map(
    lambda shape: np.zeros(shape, np.uint8))
bad_count_array = st.sampled_from([0, 2, 3, 7]).map(lambda k: np.zeros((k, 4, 4, 3), np.uint8))
corrupt_images = st.one_of(
    st.binary(max_size=200).filter(lambda b: not b.startswith((b"\xff\xd8", b"\x89PNG"))),
    st.binary(max_size=200).map(lambda b: b"\xff\xd8" + b),
    st.integers(0, SOS).map(lambda n: JPEG[:n]),
    st.binary(min_size=1, max_size=100).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
)
bad_frames = st.one_of(
    bad_dtype_array, bad_shape_array, bad_count_array,
    corrupt_images.map(lambda image: [image] * K),
    st.lists(corrupt_images, min_size=K + 1, max_size=4),
    st.just([]),
    st.one_of(st.integers(INT_MIN, INT_MAX), st.text(max_size=10), st.none(), st.lists(st.integers(INT_MIN, INT_MAX), min_size=K, max_size=K)),
)
bad_instruction = st.one_of(
    st.sampled_from(["", " ", "\n\t"]),
    st.text(min_size=513, max_size=600),
    st.just([]),
    st.lists(st.just("ok"), min_size=17, max_size=20),
    st.lists(st.one_of(st.integers(INT_MIN, INT_MAX), st.none(), st.binary(max_size=3)), min_size=1, max_size=3),
    st.integers(INT_MIN, INT_MAX), st.none(), st.binary(max_size=4),
)
raw_array_maps = st.one_of(
    st.sampled_from(["|O", "|V8", "i4,i4", "<c8", "S0", "zz", "O8"]).map(
        lambda dtype: {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": dtype, b"shape": [1]}),
    st.integers(1, 50).map(lambda n: {b"__ndarray__": True, b"data": b"\0" * n, b"dtype": "<f8", b"shape": [1000]}),
)
mutations = st.one_of(
    bad_frames.map(lambda v: ("frames", v)),
    bad_instruction.map(lambda v: ("instruction", v)),
    st.one_of(bad_numbers, st.integers(INT_MIN, 0), st.integers(min_value=201, max_value=2**63 - 1), not_int)
    .map(lambda v: ("steps", v)),
    st.one_of(bad_numbers, st.integers(INT_MIN, K), st.integers(min_value=N + 1, max_value=2**31), not_int)
    .map(lambda v: ("num_frames", v)),
    st.one_of(bad_numbers.map(lambda v: {"frame": v}), bad_numbers.map(lambda v: {"text": v}),
              st.dictionaries(st.text(max_size=4).filter(lambda k: k not in ("frame", "text")), st.integers(INT_MIN, INT_MAX), min_size=1),
              st.integers(INT_MIN, INT_MAX), st.text(max_size=3)).map(lambda v: ("guidance", v)),
    st.one_of(st.integers(INT_MIN, -1), st.integers(min_value=2**32, max_value=2**63), st.floats(), st.text(max_size=3),
              st.lists(st.integers(0, 9), min_size=2, max_size=4)).map(lambda v: ("seed", v)),
    st.one_of(st.just(math.nan), st.just(math.inf), st.floats(max_value=-1e-3), st.floats(0, 1e9), st.text(max_size=3))
    .map(lambda v: ("deadline", v)),
    st.one_of(st.text(max_size=6).filter(lambda v: v not in ("raw", "jpeg")), st.integers(INT_MIN, INT_MAX))
    .map(lambda v: ("encoding", v)),
    st.one_of(st.text(max_size=8).filter(lambda v: v not in ("predict", "info", "health")), st.integers(INT_MIN, INT_MAX), st.none())
    .map(lambda v: ("method", v)),
    st.sampled_from(["method", "frames", "instruction"]).map(lambda v: (v, None)),
)


@FUZZ
@given(mutation=mutations, request_id=st.one_of(st.integers(INT_MIN, INT_MAX), st.text(max_size=8), st.none()))
def test_invalid_requests_get_error_replies(socket: zmq.Socket, mutation: tuple[str, Any], request_id: Any) -> None:
    field, value = mutation
    request = base() | {"id": request_id}
    if value is None and field in ("method", "frames", "instruction"):
        del request[field]
    else:
        request[field] = value
    reply = assert_error_reply(socket, [wire.packb(request)])
    assert reply["id"] == request_id


@settings(FUZZ, max_examples=100)
@given(array=raw_array_maps, request_id=st.integers(0, 9))
def test_undecodable_arrays_get_error_replies(socket: zmq.Socket, array: dict, request_id: int) -> None:
    """Arrays are decoded field by field after the map itself, so even a refused one gets its id echoed."""
    reply = assert_error_reply(socket, [msgpack.packb(base() | {"id": request_id, "frames": array})])
    assert reply["id"] == request_id and reply["error"]["code"] in {ErrorCode.BAD_DTYPE, ErrorCode.BAD_SHAPE}


not_maps = st.one_of(st.integers(INT_MIN, INT_MAX), st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=20), st.none(),
                     st.lists(st.integers(INT_MIN, INT_MAX), max_size=5), st.booleans())


@settings(FUZZ, max_examples=400)
@given(body=st.one_of(st.binary(max_size=64), not_maps.map(msgpack.packb),
                      st.lists(st.binary(max_size=8), min_size=2, max_size=3)))
def test_garbage_and_non_maps_get_error_replies(socket: zmq.Socket, body: bytes | list[bytes]) -> None:
    parts = body if isinstance(body, list) else [body]
    reply = assert_error_reply(socket, parts)
    assert reply["error"]["code"] in {ErrorCode.BAD_MSGPACK, ErrorCode.NOT_A_MAP, ErrorCode.BAD_DTYPE,
                                      ErrorCode.BAD_SHAPE, ErrorCode.BAD_TYPE}
