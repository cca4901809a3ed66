"""The node's request/reply contract: error codes, limits and request validation.

Shared by the server and the client, so it imports numpy and the standard library only (a robot
computer has numpy, pyzmq and msgpack). Image decoding needs OpenCV and lives in the server;
everything checkable without it is checked here, at the edge, quoting the bad value.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
METHODS = ("predict", "info", "health")
FIELDS = ("method", "id", "frames", "instruction", "num_frames", "steps", "guidance", "seed", "encoding", "deadline")
ARRAY_RANKS = {field: 4 if field == "frames" else 0 for field in FIELDS}  # frames (K, H, W, 3); elsewhere scalars only
ENCODINGS = ("raw", "jpeg")
MAX_SEED = 2**32 - 1  # numpy and torch generators both accept this range
QUOTE_CHARS = 80  # error messages quote at most this much of a bad value


class ErrorCode:
    """Stable error codes; clients branch on these, never on message text."""

    BAD_MSGPACK = "BAD_MSGPACK"  # body is not one msgpack frame
    NOT_A_MAP = "NOT_A_MAP"
    UNKNOWN_METHOD = "UNKNOWN_METHOD"
    MISSING_FIELD = "MISSING_FIELD"
    BAD_TYPE = "BAD_TYPE"
    BAD_DTYPE = "BAD_DTYPE"
    BAD_SHAPE = "BAD_SHAPE"
    BAD_FRAME_COUNT = "BAD_FRAME_COUNT"
    BAD_INSTRUCTION = "BAD_INSTRUCTION"
    BAD_NUMBER = "BAD_NUMBER"
    BAD_IMAGE = "BAD_IMAGE"
    TOO_LARGE = "TOO_LARGE"
    TIMEOUT = "TIMEOUT"
    MODEL_ERROR = "MODEL_ERROR"
    INTERNAL = "INTERNAL"  # the node's own code failed on this message; logged with the incident number
    OVERLOADED = "OVERLOADED"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    UNAVAILABLE = "UNAVAILABLE"  # client side only: no reply after all retries


class NodeError(Exception):
    """An error with a stable code: raised by validation, sent as an error reply, re-raised by the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple:
        """Pickle by code and message, so the error crosses process boundaries (Ray) intact."""
        return NodeError, (self.code, self.message)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; generous for a robot, small enough to refuse abuse early."""

    max_instructions: int = 16
    max_instruction_chars: int = 512
    max_image_side: int = 4096
    max_steps: int = 200
    max_guidance: float = 50.0


@dataclass(frozen=True)
class ModelGeometry:
    """The model geometry requests are validated against."""

    height: int
    width: int
    num_frames: int  # N: frames in a clip, context included
    context_frames: int  # K: frames the client sends


@dataclass(frozen=True)
class PredictRequest:
    """A validated predict request; frames are still at the client's size (raw) or encoded."""

    id: Any
    frames: np.ndarray | tuple[bytes, ...]  # uint8 (K, h, w, 3), or K PNG/JPEG byte strings
    instructions: tuple[str, ...]
    seeds: tuple[int, ...]  # one per instruction
    num_frames: int | None = None
    steps: int | None = None
    guidance_frame: float | None = None
    guidance_text: float | None = None
    encoding: str = "raw"
    deadline: float | None = None


@dataclass(frozen=True)
class MetaRequest:
    """An `info` or `health` request."""

    id: Any
    method: str


class _Quoter(reprlib.Repr):
    """reprlib that also cuts bytes and arrays before formatting them, not after."""

    def repr_bytes(self, value: bytes, level: int) -> str:
        return repr(value[: self.maxstring]) + ("..." if len(value) > self.maxstring else "")

    def repr_ndarray(self, value: np.ndarray, level: int) -> str:
        return f"array(shape={value.shape}, dtype={value.dtype})"


_QUOTER = _Quoter()
_QUOTER.maxstring = _QUOTER.maxother = QUOTE_CHARS


def quote(value: Any) -> str:
    """repr() of a bad value, cut short so an error never echoes megabytes back."""
    text = _QUOTER.repr(value)
    return text if len(text) <= 2 * QUOTE_CHARS else text[: 2 * QUOTE_CHARS] + "..."


def request_id(message: Any) -> Any:
    """The id to echo, even for a request that fails validation; None when it cannot be echoed."""
    rid = message.get("id") if isinstance(message, dict) else None
    return rid if _echoable(rid) else None


def _echoable(value: Any) -> bool:
    """Plain msgpack scalars, and numpy booleans and numbers of at most 8 bytes, travel back unchanged."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return True
    return isinstance(value, np.generic) and value.dtype.kind in "biuf" and value.dtype.itemsize <= 8


def parse_request(message: Any, geometry: ModelGeometry, limits: Limits = Limits()) -> PredictRequest | MetaRequest:
    """Validate a decoded request map; raise NodeError naming the first problem found."""
    if not isinstance(message, dict):
        raise NodeError(ErrorCode.NOT_A_MAP, f"a request is a map, got {type(message).__name__} {quote(message)}")
    method = _require(message, "method")
    if not isinstance(method, str):
        raise NodeError(ErrorCode.BAD_TYPE, f"'method' must be a string, got {quote(method)}")
    if method not in METHODS:
        raise NodeError(ErrorCode.UNKNOWN_METHOD, f"unknown method {quote(method)}; expected one of {METHODS}")
    if not _echoable(message.get("id")):
        raise NodeError(ErrorCode.BAD_TYPE, f"'id' must be nil, a boolean, a number, a string or bytes, got {quote(message['id'])}")
    if method != "predict":
        return MetaRequest(id=message.get("id"), method=method)

    frames = _parse_frames(_require(message, "frames"), geometry, limits)
    instructions = _parse_instructions(_require(message, "instruction"), limits)
    num_frames = _optional_int(message, "num_frames", geometry.context_frames + 1, geometry.num_frames)
    steps = _optional_int(message, "steps", 1, limits.max_steps)
    guidance_frame, guidance_text = _parse_guidance(message.get("guidance"), limits)
    encoding = _or_default(message, "encoding", "raw")
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise NodeError(ErrorCode.BAD_TYPE, f"'encoding' must be one of {ENCODINGS}, got {quote(encoding)}")
    deadline = message.get("deadline")
    if deadline is not None:
        deadline = _number(deadline, "deadline", 0.0, math.inf)
    return PredictRequest(
        id=message.get("id"),
        frames=frames,
        instructions=instructions,
        seeds=_parse_seeds(_or_default(message, "seed", 0), len(instructions)),
        num_frames=num_frames,
        steps=steps,
        guidance_frame=guidance_frame,
        guidance_text=guidance_text,
        encoding=encoding,
        deadline=deadline,
    )


def _require(message: dict, field: str) -> Any:
    if message.get(field) is None:
        raise NodeError(ErrorCode.MISSING_FIELD, f"missing field {field!r}" + (" (nil)" if field in message else ""))
    return message[field]


def _or_default(message: dict, field: str, default: Any) -> Any:
    """Optional fields: absent and nil both mean the default."""
    value = message.get(field)
    return default if value is None else value


def _parse_frames(frames: Any, geometry: ModelGeometry, limits: Limits) -> np.ndarray | tuple[bytes, ...]:
    k = geometry.context_frames
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            raise NodeError(ErrorCode.BAD_DTYPE, f"'frames' must be uint8 RGB, got dtype {frames.dtype}")
        if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[1:3], default=0) < 1:
            raise NodeError(ErrorCode.BAD_SHAPE, f"'frames' must have shape (K, H, W, 3), got {frames.shape}")
        if frames.shape[0] != k:
            raise NodeError(ErrorCode.BAD_FRAME_COUNT, f"'frames' must hold K={k} frames, got {frames.shape[0]}")
        if max(frames.shape[1:3]) > limits.max_image_side:
            raise NodeError(
                ErrorCode.TOO_LARGE, f"frame size {frames.shape[1:3]} exceeds {limits.max_image_side} pixels a side"
            )
        return frames
    if isinstance(frames, (list, tuple)):
        if len(frames) != k:
            raise NodeError(ErrorCode.BAD_FRAME_COUNT, f"'frames' must hold K={k} images, got {len(frames)}")
        for i, image in enumerate(frames):
            if not isinstance(image, bytes):
                raise NodeError(ErrorCode.BAD_TYPE, f"'frames'[{i}] must be PNG/JPEG bytes, got {quote(image)}")
        return tuple(frames)
    raise NodeError(
        ErrorCode.BAD_TYPE, f"'frames' must be a uint8 array or a list of PNG/JPEG bytes, got {quote(frames)}"
    )


def _parse_instructions(value: Any, limits: Limits) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise NodeError(ErrorCode.BAD_TYPE, f"'instruction' must be a string or a list of strings, got {quote(value)}")
    if not 1 <= len(items) <= limits.max_instructions:
        raise NodeError(
            ErrorCode.BAD_INSTRUCTION, f"give 1 to {limits.max_instructions} instructions, got {len(items)}"
        )
    for text in items:
        if not isinstance(text, str):
            raise NodeError(ErrorCode.BAD_TYPE, f"each instruction must be a string, got {quote(text)}")
        if not text.strip():
            raise NodeError(ErrorCode.BAD_INSTRUCTION, f"instruction is empty: {quote(text)}")
        if len(text) > limits.max_instruction_chars:
            raise NodeError(
                ErrorCode.BAD_INSTRUCTION,
                f"instruction has {len(text)} characters, more than {limits.max_instruction_chars}: {quote(text)}",
            )
    return tuple(items)


def _parse_guidance(value: Any, limits: Limits) -> tuple[float | None, float | None]:
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise NodeError(ErrorCode.BAD_TYPE, f"'guidance' must be a map {{'frame': s_V, 'text': s_T}}, got {quote(value)}")
    unknown = set(value) - {"frame", "text"}
    if unknown:
        raise NodeError(ErrorCode.BAD_TYPE, f"'guidance' takes keys 'frame' and 'text', got {quote(sorted(map(str, unknown)))}")
    scales = [value.get(key) for key in ("frame", "text")]
    return tuple(
        None if s is None else _number(s, f"guidance.{key}", 0.0, limits.max_guidance)
        for key, s in zip(("frame", "text"), scales)
    )


def _parse_seeds(value: Any, count: int) -> tuple[int, ...]:
    """One seed per instruction, or one int s meaning s, s+1, ... as the in-process pipeline does."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise NodeError(ErrorCode.BAD_SHAPE, f"'seed' list must have one seed per instruction ({count}), got {len(value)}")
        return tuple(_integer(s, "seed", 0, MAX_SEED) for s in value)
    first = _integer(value, "seed", 0, MAX_SEED - count + 1)
    return tuple(range(first, first + count))


def _optional_int(message: dict, field: str, low: int, high: int) -> int | None:
    value = message.get(field)
    return None if value is None else _integer(value, field, low, high)


def _integer(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise NodeError(ErrorCode.BAD_TYPE, f"{field!r} must be an integer, got {quote(value)}")
    if not low <= int(value) <= high:
        raise NodeError(ErrorCode.BAD_NUMBER, f"{field!r} must be in [{low}, {high}], got {quote(value)}")
    return int(value)


def _number(value: Any, field: str, low: float, high: float) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise NodeError(ErrorCode.BAD_TYPE, f"{field!r} must be a number, got {quote(value)}")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise NodeError(ErrorCode.BAD_NUMBER, f"{field!r} must be finite and in [{low}, {high}], got {quote(value)}")
    return number


def ok_reply(request_id: Any, **fields: Any) -> dict:
    return {"ok": True, "id": request_id, **fields}


def error_reply(request_id: Any, error: NodeError) -> dict:
    return {"ok": False, "id": request_id, "error": {"code": error.code, "message": error.message}}
