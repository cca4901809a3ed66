"""Properties of a real node over ZeroMQ, whatever a peer sends: every message gets a reply, the node lives.

Hypothesis draws arbitrary msgpack values, maps with the protocol's keys and values of any type,
and openpi-style array maps with random dtype strings, shapes (huge, negative, zero, many
dimensions, bignums) and byte lengths. Each example goes to the one `live_node` of the test run
(tests/conftest.py) and must be answered within a deadline by a well-formed reply, after which
`health` answers too. The example budget is the Hypothesis profile's: `make test` runs the
default one; the long run is

    .venv/bin/python -m pytest tests/test_node_properties.py --hypothesis-profile=long -s

which prints examples, replies, the slowest reply and the node's memory before and after.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Iterator

import msgpack
import numpy as np
import pytest
import zmq
from foresight_client import wire
from foresight_client.protocol import FIELDS, METHODS, ErrorCode
from hypothesis import given
from hypothesis import strategies as st

from bench.unread import rss_mib

REPLY_DEADLINE_S = 60.0  # a valid request runs the model; CI machines are shared
K, SIDE = 1, 64  # tiny-random: context frames, resolution
CODES = {value for key, value in vars(ErrorCode).items() if key.isupper()}
INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what msgpack can carry

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(INT_MIN, INT_MAX), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=24), st.binary(max_size=32), st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
)
any_keys = st.one_of(st.text(max_size=12), st.binary(max_size=6), st.integers(INT_MIN, INT_MAX))
msgpack_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=6), st.dictionaries(st.text(max_size=12), children, max_size=6),
                               st.dictionaries(any_keys, children, max_size=3)),
    max_leaves=24,
)

DTYPE_STRINGS = ["|u1", "<f4", ">i2", "|b1", "<M8[s]", "<m8[ns]", "<U3", "|S4", "<f2", "<u8", "|i1", "<c8", "|O", "|V8",
                 "T", "i4,i4", "(2,)u1", "(99999999999)u1", "U99999999999", "S0", "M8[zz]", "f16", "O8", "uint8", "float64"]
dtype_values = st.one_of(st.sampled_from(DTYPE_STRINGS), st.text(max_size=20), st.binary(max_size=8), scalars)
sizes = st.one_of(st.integers(0, 70), st.sampled_from([0, 1, 3, 4096, 4097, 2**31 - 1, 2**31, 2**32, 2**63 - 1, INT_MAX]),
                  st.integers(INT_MIN, INT_MAX), st.integers(INT_MIN, -1))
shape_values = st.one_of(st.lists(sizes, max_size=40), st.lists(st.one_of(sizes, scalars), max_size=6), scalars)
data_values = st.one_of(st.binary(max_size=256), st.integers(0, 70_000).map(bytes), scalars)


@st.composite
def ndarray_maps(draw: st.DrawFn) -> dict:
    """An openpi array (or scalar) map: keys as bytes or text, each part random or missing."""
    marker = draw(st.sampled_from(["__ndarray__", "__npgeneric__"]))
    parts = {marker: draw(st.one_of(st.just(True), scalars)), "data": draw(data_values), "dtype": draw(dtype_values),
             "shape": draw(shape_values)}
    kept = draw(st.lists(st.sampled_from(list(parts)), unique=True, min_size=1)) if draw(st.booleans()) else list(parts)
    binary_keys = draw(st.booleans())
    return {(key.encode() if binary_keys else key): parts[key] for key in kept}


@st.composite
def consistent_arrays(draw: st.DrawFn) -> dict:
    """An array map whose data nearly fits its shape: reaches the checks after decoding (sizes, resizing)."""
    dtype = np.dtype(draw(st.sampled_from(["|u1", "<f4", "|b1", ">i2"])))
    shape = draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 7, 33, 64, 4097]), min_size=0, max_size=6))
    count = int(np.prod(shape)) * dtype.itemsize
    if count > 300_000:
        shape, count = [K, 1, 4097, 3], K * 4097 * 3
    slack = draw(st.sampled_from([0, 0, 0, -1, 1]))
    return {b"__ndarray__": True, b"data": bytes(max(count + slack, 0)), b"dtype": dtype.str, b"shape": shape}


frames_values = st.one_of(
    consistent_arrays(), ndarray_maps(),
    st.lists(st.one_of(st.binary(max_size=64).map(lambda b: b"\xff\xd8" + b), st.binary(max_size=64).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
                       ndarray_maps(), scalars), max_size=3),
    st.builds(lambda h, w: {b"__ndarray__": True, b"data": bytes(K * h * w * 3), b"dtype": "|u1", b"shape": [K, h, w, 3]},
              st.integers(1, 40), st.integers(1, 40)),
)
PLAUSIBLE = {
    "frames": frames_values,
    "instruction": st.one_of(st.text(max_size=30), st.lists(st.text(min_size=1, max_size=10), min_size=0, max_size=2)),
    "steps": st.one_of(st.just(1), st.integers(INT_MIN, 0), st.integers(201, INT_MAX)),  # a valid request runs one step
    "num_frames": st.one_of(st.integers(-2, 10), st.integers(INT_MIN, INT_MAX)),
    "guidance": st.one_of(st.dictionaries(st.sampled_from(["frame", "text", "other"]), st.one_of(st.floats(), st.integers(-3, 60))),
                          msgpack_values),
    "seed": st.one_of(st.integers(-1, 2**32), st.lists(st.integers(INT_MIN, INT_MAX), max_size=3)),
    "encoding": st.sampled_from(["raw", "jpeg", "png", ""]),
    "deadline": st.one_of(st.floats(), st.just(time.time() + 3600.0)),
    "id": st.one_of(scalars, ndarray_maps()),
}


@st.composite
def protocol_maps(draw: st.DrawFn) -> dict:
    """A map with the protocol's keys, each value plausible, an array map, or any msgpack value."""
    message: dict[Any, Any] = {"method": draw(st.one_of(st.sampled_from(METHODS), msgpack_values))}
    for field in draw(st.lists(st.sampled_from([f for f in FIELDS if f != "method"]), unique=True)):
        choices = [msgpack_values, ndarray_maps()] + ([PLAUSIBLE[field]] * 3 if field in PLAUSIBLE else [])
        message[field] = draw(st.one_of(*choices))
    if message["method"] == "predict" and "steps" not in message:
        message["steps"] = 1  # a request that passes validation runs one step, not the model's default
    if draw(st.booleans()):
        message[draw(st.text(max_size=8))] = draw(msgpack_values)  # unknown fields are ignored
    return message


class Tally:
    """What the run sent and got, printed at the end of the module (the long run's figures)."""

    def __init__(self) -> None:
        self.sent = 0
        self.codes: Counter[str] = Counter()
        self.slowest_s = 0.0


@pytest.fixture(scope="module")
def tally(live_node) -> Iterator[Tally]:
    counts = Tally()
    rss_before = rss_mib(live_node.pid)
    started = time.monotonic()
    yield counts
    health = exchange(live_node.socket, msgpack.packb({"method": "health"}))
    print(f"\nnode properties: {counts.sent} examples in {time.monotonic() - started:.0f} s, {counts.sent} replies, "
          f"slowest {counts.slowest_s:.2f} s; replies by code {dict(counts.codes)}; node internal_errors "
          f"{health['internal_errors']}, dropped_replies {health['dropped_replies']}; "
          f"RSS {rss_before:.0f} -> {rss_mib(live_node.pid):.0f} MiB")


def exchange(socket: zmq.Socket, body: bytes) -> dict:
    socket.send(body)
    assert socket.poll(int(REPLY_DEADLINE_S * 1000)), f"no reply within {REPLY_DEADLINE_S:.0f} s to {body[:120]!r}"
    return wire.unpackb(socket.recv())


def check_answered(live_node, tally: Tally, body: bytes) -> dict:
    """Send one message: a well-formed reply within the deadline, then `health` answers."""
    started = time.monotonic()
    reply = exchange(live_node.socket, body)
    tally.slowest_s = max(tally.slowest_s, time.monotonic() - started)
    tally.sent += 1
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool) and "timing" in reply, reply
    if reply["ok"]:
        tally.codes["ok"] += 1
    else:
        assert reply["error"]["code"] in CODES and isinstance(reply["error"]["message"], str), reply
        assert "Traceback" not in reply["error"]["message"], reply
        tally.codes[reply["error"]["code"]] += 1
    health = exchange(live_node.socket, msgpack.packb({"method": "health", "id": "after"}))
    assert health["ok"] and health["id"] == "after", health
    return reply


@given(value=msgpack_values)
def test_any_msgpack_value_gets_a_reply(live_node, tally, value: Any) -> None:
    check_answered(live_node, tally, msgpack.packb(value))


@given(message=protocol_maps())
def test_any_map_with_protocol_keys_gets_a_reply(live_node, tally, message: dict) -> None:
    reply = check_answered(live_node, tally, msgpack.packb(message))
    assert reply["ok"] or reply["error"]["code"] != ErrorCode.INTERNAL, reply


@given(array=st.one_of(ndarray_maps(), consistent_arrays()), field=st.sampled_from(FIELDS + ("unknown",)),
       nested=st.booleans())
def test_any_array_map_in_any_field_gets_a_reply(live_node, tally, array: dict, field: str, nested: bool) -> None:
    message = {"method": "predict", "id": 5, "frames": np.zeros((K, SIDE, SIDE, 3), np.uint8), "instruction": "x",
               "steps": 1, field: [array] if nested else array}
    reply = check_answered(live_node, tally, wire.packb(message))
    assert reply["ok"] or reply["error"]["code"] != ErrorCode.INTERNAL, reply
