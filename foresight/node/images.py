"""Camera frames in and out of the node: PNG/JPEG decoding with bounded cost, resizing, JPEG replies.

Every image's size is read from its header before it is decoded, in a number of steps bounded
independently of the byte count, so a huge or crafted image is refused cheaply.
"""

from __future__ import annotations

import re
import struct
from typing import Sequence

import cv2
import numpy as np
from foresight_client.protocol import ErrorCode, Limits, ModelGeometry, NodeError

from sim_bridge.common.imaging import fit_frames

JPEG_QUALITY = 90
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers; C4/C8/CC are not
MAX_JPEG_SEGMENTS = 512  # segments read before the frame header; real files have a dozen
_FILL_BYTES = re.compile(rb"\xff+")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG or JPEG header, read before decoding so a huge image is refused cheaply."""
    if data.startswith(PNG_MAGIC) and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if not data.startswith(b"\xff\xd8"):
        return None
    i = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        fill = _FILL_BYTES.match(data, i)  # a marker is one or more 0xFF, then its code
        if fill is None or fill.end() >= len(data):
            return None
        marker, i = data[fill.end()], fill.end() + 1
        if marker in JPEG_SOF_MARKERS:
            if i + 7 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 3 : i + 7])
            return height, width
        if not (marker == 0x01 or 0xD0 <= marker <= 0xD8):  # all other markers carry a length
            if i + 2 > len(data):
                return None
            i += struct.unpack(">H", data[i : i + 2])[0]
    return None


def decode_image(data: bytes, max_side: int) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (h, w, 3) RGB, or BAD_IMAGE / TOO_LARGE."""
    size = image_size(data)
    if size is None:
        raise NodeError(ErrorCode.BAD_IMAGE, f"not a PNG or JPEG image (starts {data[:8]!r}, {len(data)} bytes)")
    if max(size) > max_side or min(size) < 1:
        raise NodeError(ErrorCode.TOO_LARGE, f"image size {size} is outside 1..{max_side} pixels a side")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise NodeError(ErrorCode.BAD_IMAGE, f"corrupt image ({len(data)} bytes, header says {size[0]}x{size[1]})")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def prepare_frames(frames: np.ndarray | Sequence[bytes], geometry: ModelGeometry, limits: Limits) -> np.ndarray:
    """Frames of any size -> uint8 (K, H, W, 3) at model resolution: scale to cover, centre-crop."""
    if isinstance(frames, np.ndarray):
        return np.ascontiguousarray(fit_frames(frames, geometry.height, geometry.width))
    return np.stack([fit_frames(decode_image(f, limits.max_image_side)[None], geometry.height, geometry.width)[0] for f in frames])


def encode_jpeg(frames: np.ndarray) -> list[list[bytes]]:
    """uint8 (M, T, H, W, 3) RGB -> M lists of T JPEG byte strings."""
    out = []
    for clip in frames:
        row = []
        for frame in clip:
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError("OpenCV could not encode a JPEG")
            row.append(data.tobytes())
        out.append(row)
    return out
