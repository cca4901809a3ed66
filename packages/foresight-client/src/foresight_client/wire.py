"""One msgpack frame per message, numpy arrays in the openpi msgpack-numpy convention.

Why not pickle: a node on a robot network must never run code a peer sends. Why the openpi
layout: a client using `openpi_client.msgpack_numpy.packb/unpackb` talks to the node unchanged.
An array travels as a map with binary keys, exactly as openpi writes it:
`{b"__ndarray__": True, b"data": <raw bytes>, b"dtype": "<f4", b"shape": [...]}`, and a numpy
scalar as `{b"__npgeneric__": True, b"data": <item>, b"dtype": "<i8"}`; text keys are accepted
too. Object, void (structured) and complex dtypes are refused: decoding an object array from
bytes would treat peer data as pointers. Imports numpy and msgpack only.

Decoding is bounded (`DecodeLimits`): what one message may make the decoder allocate is capped
by item counts, not only by its byte size, since 24 MiB of nils would otherwise become 24 million
list slots. An array's shape is checked before numpy sees it: at most the rank its field allows,
every size a plain non-negative int, and the elements it could address (zero sizes counted as one)
within `max_bin_bytes`, so no shape, however large, zero-sized or deep, reaches numpy's own
limits. A decoding error says what is wrong in the protocol's terms, not msgpack's or numpy's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import msgpack
import numpy as np

from foresight_client.protocol import ErrorCode, NodeError, quote

REFUSED_KINDS = frozenset("VOcT")  # void/structured, object, complex (as openpi), and variable-width strings
MAX_DIMS = 32
MAX_DTYPE_CHARS = 16
MAX_NESTING = 1023  # msgpack's own decoder stack: deeper input is refused while decoding
MAX_VALUE_DEPTH = 32  # nesting searched for numpy values; a valid request needs 3
_ARRAY_KEYS = (b"__ndarray__", "__ndarray__")
_SCALAR_KEYS = (b"__npgeneric__", "__npgeneric__")
_LENGTH_LIMIT = re.compile(r"(\d+) exceeds max_(array|map|str|bin|ext)_len\((\d+)\)")
_LIMIT_WORDS = {"array": "an array of {} items", "map": "a map of {} entries", "str": "a string of {} bytes",
                "bin": "a binary of {} bytes", "ext": "an extension value of {} bytes"}


@dataclass(frozen=True)
class DecodeLimits:
    """What one message may hold; a valid request uses a few dozen items."""

    max_items: int = 65_536  # entries in all maps and arrays together
    max_container: int = 4096  # entries in one map or array
    max_str_bytes: int = 2**16
    max_bin_bytes: int = 2**31 - 1  # binaries are bounded by the message size


@dataclass(frozen=True)
class UnsupportedExt:
    """A msgpack extension value: carried through decoding, refused as BAD_TYPE where a field is read."""

    code: int
    size: int


def packb(obj: Any) -> bytes:
    """Encode one message; numpy arrays and scalars become openpi-style maps."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes, limits: DecodeLimits = DecodeLimits()) -> Any:
    """Decode one message with numpy values anywhere in it (how a client reads a reply).

    Raise NodeError (BAD_MSGPACK, BAD_DTYPE, BAD_SHAPE, BAD_TYPE) on anything malformed.
    Arrays come back read-only over the decoded binary.
    """
    return decode_numpy(unpack_plain(data, limits), limits)


def decode_fields(message: Any, ranks: Mapping[str, int], limits: DecodeLimits = DecodeLimits()) -> Any:
    """Numpy values only inside the named fields of a decoded request map (how the node reads one).

    ranks: field -> the most dimensions an array in it may have. Unknown fields stay plain msgpack
    values and cost no numpy work; a top-level map is always the request itself, even when it has
    an `__ndarray__` key.
    """
    if not isinstance(message, dict):
        return message
    return {key: decode_numpy(value, limits, ranks[key], field=key) if key in ranks else value
            for key, value in message.items()}


def unpack_plain(data: bytes, limits: DecodeLimits = DecodeLimits()) -> Any:
    """One msgpack message -> plain Python values, within `limits`; ext values become UnsupportedExt."""
    budget = [limits.max_items]

    def count(container: Any) -> Any:
        budget[0] -= len(container)
        if budget[0] < 0:
            raise NodeError(ErrorCode.BAD_MSGPACK, f"the message holds more than {limits.max_items} map and array entries")
        return container

    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, list_hook=count, object_hook=count,
            ext_hook=lambda code, payload: UnsupportedExt(code, len(payload)),
            max_array_len=limits.max_container, max_map_len=limits.max_container,
            max_str_len=limits.max_str_bytes, max_bin_len=limits.max_bin_bytes, max_ext_len=limits.max_str_bytes,
        )
    except NodeError:
        raise
    except Exception as exc:  # msgpack raises ValueError and its subclasses, and hooks may raise anything
        raise NodeError(ErrorCode.BAD_MSGPACK, _explain(exc)) from exc


def _explain(exc: Exception) -> str:
    """A msgpack decoding error, said in the protocol's terms."""
    if isinstance(exc, msgpack.ExtraData):
        return "more data follows the first msgpack value; a message is exactly one value"
    if isinstance(exc, msgpack.StackError):
        return f"maps and arrays nest more than {MAX_NESTING} levels deep"
    if isinstance(exc, msgpack.FormatError):
        return "not msgpack: a byte that starts no msgpack value"
    if isinstance(exc, UnicodeDecodeError):
        return f"a string is not valid UTF-8 (byte {exc.start})"
    text = str(exc)
    limit = _LENGTH_LIMIT.search(text)
    if limit:
        size, kind, most = limit.groups()
        return f"{_LIMIT_WORDS[kind].format(size)}, more than the {most} allowed"
    if "strict_map_key" in text:
        return "map keys must be strings"
    if "incomplete input" in text:
        return "the message ends in the middle of a msgpack value"
    return f"not one valid msgpack message ({type(exc).__name__})"


def decode_numpy(value: Any, limits: DecodeLimits = DecodeLimits(), max_rank: int = MAX_DIMS, *,
                 field: str = "value", depth: int = 0) -> Any:
    """Turn openpi array and scalar maps inside `value` (maps, lists, or the value itself) into numpy.

    Arrays may have at most `max_rank` dimensions (and never more than MAX_DIMS); `field` names
    the value in error messages.
    """
    if depth > MAX_VALUE_DEPTH:
        raise NodeError(ErrorCode.BAD_TYPE, f"a value nests maps and arrays more than {MAX_VALUE_DEPTH} levels deep")
    if isinstance(value, list):
        return [decode_numpy(item, limits, max_rank, field=field, depth=depth + 1) for item in value]
    if isinstance(value, dict):
        items = {key: decode_numpy(item, limits, max_rank, field=field, depth=depth + 1) for key, item in value.items()}
        return _decode(items, limits, min(max_rank, MAX_DIMS), field)
    return value


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in REFUSED_KINDS:
        raise ValueError(f"refusing to send dtype {obj.dtype}: object/void/complex/variable-width string data cannot travel safely")
    if isinstance(obj, np.ndarray):
        return {
            b"__ndarray__": True,
            b"data": np.ascontiguousarray(obj).tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode {type(obj).__name__} {quote(obj)}")


def _field(obj: dict, name: str) -> Any:
    for key in (name.encode(), name):
        if key in obj:
            return obj[key]
    raise NodeError(ErrorCode.BAD_MSGPACK, f"array map lacks {name!r}")


def _dtype(obj: dict) -> np.dtype:
    text = _field(obj, "dtype")
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    if not isinstance(text, str) or len(text) > MAX_DTYPE_CHARS:
        raise NodeError(ErrorCode.BAD_DTYPE, f"dtype must be a short numpy dtype string, got {quote(text)}")
    try:
        dtype = np.dtype(text)
    except Exception as exc:  # numpy's dtype parser raises TypeError, ValueError, SyntaxError, OverflowError, ...
        raise NodeError(ErrorCode.BAD_DTYPE, f"unknown dtype {quote(text)}") from exc
    if dtype.kind in REFUSED_KINDS or dtype.itemsize == 0:
        raise NodeError(ErrorCode.BAD_DTYPE, f"refused dtype {quote(text)}: object, void, complex, variable-width string or sizeless")
    return dtype


def _shape(value: Any, itemsize: int, limits: DecodeLimits, max_rank: int, field: str) -> tuple[int, ...]:
    """A peer's shape, checked before numpy sees it: rank, plain sizes, and what it could address."""
    if not isinstance(value, (list, tuple)) or not all(type(n) is int for n in value):
        raise NodeError(ErrorCode.BAD_SHAPE, f"{field!r}: an array shape is a list of integer sizes, got {quote(value)}")
    if len(value) > max_rank:
        raise NodeError(ErrorCode.BAD_SHAPE,
                        f"{field!r} takes arrays of at most {max_rank} dimensions, got {len(value)}: {quote(value)}")
    if any(n < 0 for n in value):
        raise NodeError(ErrorCode.BAD_SHAPE, f"{field!r}: array sizes must not be negative, got {quote(value)}")
    reach = itemsize  # bytes the shape addresses with every zero size counted as one: bounds each size too
    for n in value:
        reach *= max(n, 1)
        if reach > limits.max_bin_bytes:
            raise NodeError(ErrorCode.BAD_SHAPE, f"{field!r}: array shape {quote(value)} of {itemsize}-byte items "
                                                 f"spans more than the {limits.max_bin_bytes} bytes an array may hold")
    return tuple(value)


def _decode(obj: dict, limits: DecodeLimits, max_rank: int, field: str) -> Any:
    if any(key in obj for key in _ARRAY_KEYS):
        data, dtype = _field(obj, "data"), _dtype(obj)
        shape = _shape(_field(obj, "shape"), dtype.itemsize, limits, max_rank, field)
        if not isinstance(data, bytes):
            raise NodeError(ErrorCode.BAD_TYPE, f"{field!r}: array data must be bytes, got {quote(data)}")
        if len(data) != dtype.itemsize * math.prod(shape):
            raise NodeError(
                ErrorCode.BAD_SHAPE, f"{field!r}: an array of shape {shape} and dtype {dtype} cannot hold {len(data)} bytes"
            )
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if any(key in obj for key in _SCALAR_KEYS):
        dtype, item = _dtype(obj), _field(obj, "data")
        if isinstance(item, (dict, list, tuple)) or item is None:
            raise NodeError(ErrorCode.BAD_TYPE, f"{field!r}: numpy scalar data must be a plain value, got {quote(item)}")
        try:
            return dtype.type(item)
        except Exception as exc:  # numpy's scalar constructors raise many kinds of errors on odd input
            raise NodeError(ErrorCode.BAD_DTYPE, f"{field!r}: cannot make a {dtype} scalar from {quote(item)}") from exc
    return obj
