"""Frame geometry and media: how frames of any size reach the model, and how predictions are shown."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np


def fit_geometry(h: int, w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(new_h, new_w, top, left): the size an (h, w) frame is scaled to so it covers
    (height, width) with its aspect ratio kept, and where the centred crop starts."""
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    return new_h, new_w, (new_h - height) // 2, (new_w - width) // 2


def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale uint8 (..., h, w, 3) frames so they cover (height, width), then centre-crop.

    Aspect ratio is kept (no stretching): a 480x640 Bridge frame becomes 64x64 by scaling
    its short side to 64 and cutting equal margins left and right.
    """
    if frames.shape[-3:-1] == (height, width):
        return frames
    lead = frames.shape[:-3]
    flat = frames.reshape((-1,) + frames.shape[-3:])
    h, w = flat.shape[1:3]
    new_h, new_w, top, left = fit_geometry(h, w, height, width)
    interp = cv2.INTER_AREA if max(height / h, width / w) < 1 else cv2.INTER_CUBIC
    out = np.stack(
        [cv2.resize(f, (new_w, new_h), interpolation=interp)[top : top + height, left : left + width] for f in flat]
    )
    return out.reshape(lead + (height, width, 3))


def fit_point(xy: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """A pixel-centre (x, y) in a frame of size src_hw, mapped as `fit_frames` maps the frame."""
    (h, w), (height, width) = src_hw, dst_hw
    new_h, new_w, top, left = fit_geometry(h, w, height, width)
    return np.array([(xy[0] + 0.5) * new_w / w - 0.5 - left, (xy[1] + 0.5) * new_h / h - 0.5 - top])


def contact_sheet(rows: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """Lay out rows of uint8 (T, H, W, 3) frames as one image; rows may differ in length."""
    width_frames = max(len(r) for r in rows)
    h, w = rows[0].shape[1:3]
    sheet = np.full(((h + gap) * len(rows) - gap, (w + gap) * width_frames - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, frame in enumerate(row):
            sheet[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = frame
    return sheet


def write_png(path: str | Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def write_gif(path: str | Path, frames: np.ndarray, fps: float = 4.0, scale: int = 1) -> None:
    """Write uint8 (T, H, W, 3) frames as a looping GIF, optionally upscaled for viewing."""
    import imageio.v3 as iio

    if scale > 1:
        frames = np.repeat(np.repeat(frames, scale, axis=1), scale, axis=2)
    iio.imwrite(str(path), list(frames), extension=".gif", duration=1000.0 / fps, loop=0)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB, with a clear error for unreadable files."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path}: missing, empty or not a PNG/JPEG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
