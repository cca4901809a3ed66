"""One msgpack frame per message, numpy arrays in the openpi msgpack-numpy convention.

Why not pickle: a node on a robot network must never run code a peer sends. Why the openpi
layout: a client using `openpi_client.msgpack_numpy.packb/unpackb` talks to the node unchanged.
An array travels as a map with binary keys, exactly as openpi writes it:
`{b"__ndarray__": True, b"data": <raw bytes>, b"dtype": "<f4", b"shape": [...]}`, and a numpy
scalar as `{b"__npgeneric__": True, b"data": <item>, b"dtype": "<i8"}`; text keys are accepted
too. Object, void (structured) and complex dtypes are refused: decoding an object array from
bytes would treat peer data as pointers. Imports numpy and msgpack only.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from foresight.node.protocol import ErrorCode, NodeError, quote

REFUSED_KINDS = frozenset("VOc")  # void/structured, object, complex: the same set openpi refuses
MAX_DIMS = 32
MAX_DTYPE_CHARS = 16
_ARRAY_KEYS = (b"__ndarray__", "__ndarray__")
_SCALAR_KEYS = (b"__npgeneric__", "__npgeneric__")


def packb(obj: Any) -> bytes:
    """Encode one message; numpy arrays and scalars become openpi-style maps."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Decode one message; raise NodeError (BAD_MSGPACK, BAD_DTYPE, BAD_SHAPE) on anything malformed.

    Arrays come back read-only and zero-copy over the message buffer.
    """
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False)
    except NodeError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise NodeError(ErrorCode.BAD_MSGPACK, f"not one valid msgpack message ({type(exc).__name__}: {exc})") from exc


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in REFUSED_KINDS:
        raise ValueError(f"refusing to send dtype {obj.dtype}: object/void/complex data cannot travel safely")
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
    except (TypeError, ValueError, SyntaxError) as exc:
        raise NodeError(ErrorCode.BAD_DTYPE, f"unknown dtype {quote(text)}") from exc
    if dtype.kind in REFUSED_KINDS or dtype.itemsize == 0:
        raise NodeError(ErrorCode.BAD_DTYPE, f"refused dtype {quote(text)}: object, void, complex or sizeless")
    return dtype


def _decode(obj: dict) -> Any:
    if any(key in obj for key in _ARRAY_KEYS):
        data, shape, dtype = _field(obj, "data"), _field(obj, "shape"), _dtype(obj)
        if not isinstance(data, bytes):
            raise NodeError(ErrorCode.BAD_TYPE, f"array data must be bytes, got {quote(data)}")
        if (
            not isinstance(shape, (list, tuple))
            or len(shape) > MAX_DIMS
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        ):
            raise NodeError(ErrorCode.BAD_SHAPE, f"array shape must be a list of at most {MAX_DIMS} sizes, got {quote(shape)}")
        if len(data) != dtype.itemsize * int(np.prod(shape, dtype=object)):
            raise NodeError(
                ErrorCode.BAD_SHAPE, f"array of shape {tuple(shape)} and dtype {dtype} cannot hold {len(data)} bytes"
            )
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if any(key in obj for key in _SCALAR_KEYS):
        dtype, item = _dtype(obj), _field(obj, "data")
        if isinstance(item, (dict, list, tuple)) or item is None:
            raise NodeError(ErrorCode.BAD_TYPE, f"numpy scalar data must be a plain value, got {quote(item)}")
        try:
            return dtype.type(item)
        except (TypeError, ValueError, OverflowError) as exc:
            raise NodeError(ErrorCode.BAD_DTYPE, f"cannot make a {dtype} scalar from {quote(item)}") from exc
    return obj
