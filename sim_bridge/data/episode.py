"""The one in-memory episode every reader produces and every consumer takes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Episode:
    """One recorded clip from a fixed third-person camera.

    frames: (T, H, W, 3) uint8 RGB.
    instruction: the task sentence, or None where the recording has none.
    object_positions: object name -> (T, 2) float pixel centres (x, y) in frame coordinates,
        known for simulated episodes, None for real recordings.
    object_colors: object name -> RGB uint8 triple, for finding the object in a predicted frame.
    meta: free-form provenance (source path, seed, task parameters); JSON-serialisable.
    states: (T, D) float robot state per frame, where the recording has one.
    actions: (T - 1, A) or (T, A) float commands per transition, where the recording has them.
    """

    frames: np.ndarray
    instruction: str | None
    object_positions: dict[str, np.ndarray] | None = None
    object_colors: dict[str, tuple[int, int, int]] | None = None
    target: str | None = None
    meta: dict = field(default_factory=dict)
    states: np.ndarray | None = None
    actions: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(
                f"Episode frames must be uint8 (T, H, W, 3), got {self.frames.dtype} {self.frames.shape}"
            )
        t = len(self.frames)
        if self.states is not None and (self.states.ndim != 2 or len(self.states) != t):
            raise ValueError(f"Episode states must be (T={t}, D), got {self.states.shape}")
        if self.actions is not None and (self.actions.ndim != 2
                                         or len(self.actions) not in (t - 1, t)):
            raise ValueError(f"Episode actions must be (T-1 or T, A) with T={t}, "
                             f"got {self.actions.shape}")
