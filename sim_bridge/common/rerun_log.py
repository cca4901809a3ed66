"""Rerun recordings (.rrd) of predictions beside what really happened, for the viewer robot engineers
already use (LeRobot's): one file to scrub through instead of a folder of GIFs.

Replay, the planner, `foresight eval` and `foresight predict` all write through `RerunLog`, with
one layout, so a recording of one reads like a recording of any other:

    episode/<id>/instruction        TextDocument, static: what the prediction was conditioned on
    episode/<id>/context            Image on the `frame` timeline: the K frames the model was given
    episode/<id>/predicted          Image on `frame`: the predicted frames, after the context
    episode/<id>/truth              Image on `frame`: what was recorded at those times
    episode/<id>/metrics/<name>     Scalars on the `step` timeline: one value per decision step

Where one context has several predictions they get a last part: `predicted/<variant>`,
`instruction/<variant>` and `metrics/<variant>/<name>` in `foresight eval`,
`predicted/<instruction>` in `foresight predict`. The planner adds `candidates/<instruction>`,
`executed` (the frames the simulator rendered, its truth), `goal` and `goal_instruction`, and logs
the chosen instruction per step as a TextLog (`sim_bridge.apps.planner.log_goal`).

`frame` counts the episode's own frames (frame t holds frame t of the recording), so context,
prediction and truth line up when scrubbing; `step` indexes decision steps (replay: the frame t a
step predicts from). Episode ids go into the path as one escaped part ("sim/e0" stays one level).
A recording is written to a hidden file beside its destination and renamed into place when
complete (`atomic_files`), as everything else is.

`rerun` (the rerun-sdk package, the project's `rerun` extra) is imported only when a recording is
made, so everything else runs without it; `rrd_path` is the argparse type of `--rerun`, so a
command asked for a recording without rerun-sdk stops before doing any work.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from sim_bridge.common.atomic_files import atomic_path

log = logging.getLogger(__name__)

FRAME = "frame"  # sequence timeline: frame index within an episode
STEP = "step"  # sequence timeline: decision step
MISSING = ("Rerun recordings need rerun-sdk, which is not installed: pip install rerun-sdk "
           "(or the project's extra: pip install 'foresight[rerun]')")


def import_rerun() -> ModuleType:
    """The `rerun` module, or an ImportError that says how to install it."""
    try:
        import rerun
    except ImportError as exc:
        raise ImportError(MISSING) from exc
    return rerun


def rrd_path(value: str) -> Path:
    """argparse type of `--rerun FILE.rrd`: the path, once rerun-sdk is known to be installed."""
    if Path(value).suffix != ".rrd":
        raise argparse.ArgumentTypeError(f"{value!r}: a Rerun recording's name ends in .rrd")
    try:
        import_rerun()
    except ImportError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return Path(value)


def episode_path(episode_id: str, *parts: str) -> list[str]:
    """The entity path of `parts` under episode `episode_id`, as path parts (rerun escapes each)."""
    return ["episode", episode_id, *parts]


class RerunLog:
    """A Rerun recording streamed to `path`; `close` completes the file. Besides rerun's own
    `log_time`, every row carries one of the two timelines (`frame` or `step`) or none (static)."""

    def __init__(self, path: str | os.PathLike, application_id: str) -> None:
        self.rr = import_rerun()
        self.stream = self.rr.RecordingStream(application_id=application_id)
        self.stream.save(path)

    def _at(self, timeline: str | None = None, value: int = 0) -> None:
        self.stream.reset_time()
        if timeline is not None:
            self.stream.set_time(timeline, sequence=value)

    def frames(self, entity: Sequence[str], frames: np.ndarray, first: int) -> None:
        """uint8 (T, H, W, 3) RGB frames as images at `frame` first, first + 1, ..."""
        for i, frame in enumerate(frames):
            self._at(FRAME, first + i)
            self.stream.log(list(entity), self.rr.Image(frame))

    def image(self, entity: Sequence[str], image: np.ndarray) -> None:
        """One uint8 (H, W, 3) RGB image for the whole recording (static)."""
        self._at()
        self.stream.log(list(entity), self.rr.Image(image), static=True)

    def text(self, entity: Sequence[str], text: str, step: int | None = None) -> None:
        """A static document, or with `step` a log line at that decision step."""
        if step is None:
            self._at()
            self.stream.log(list(entity), self.rr.TextDocument(text), static=True)
        else:
            self._at(STEP, step)
            self.stream.log(list(entity), self.rr.TextLog(text))

    def scalars(self, entity: Sequence[str], step: int,
                values: Mapping[str, float | bool | None]) -> None:
        """Each known value as `entity/<name>` at decision step `step` (booleans as 0/1)."""
        self._at(STEP, step)
        for name, value in values.items():
            if value is not None:
                self.stream.log([*entity, name], self.rr.Scalars(float(value)))

    def close(self) -> None:
        self.stream.flush()
        self.stream.disconnect()


@contextlib.contextmanager
def recording_to(path: str | os.PathLike | None,
                 application_id: str) -> Iterator[RerunLog | None]:
    """A RerunLog for the `with` block, renamed into place at `path` when the block ends without an
    error; None (nothing recorded) when `path` is None."""
    if path is None:
        yield None
        return
    with atomic_path(path) as tmp:
        recording = RerunLog(tmp, application_id)
        try:
            yield recording
        finally:
            recording.close()
    log.info("wrote the Rerun recording %s", path)
