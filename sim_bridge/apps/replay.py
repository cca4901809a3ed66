"""Offline replay: drive the node with recorded episodes, as a robot controller would, and score it.

For each episode and decision step t the controller sends the K context frames ending at t and
the instruction, gets the predicted N-K frames back, and compares them with what was recorded.

Which frames are compared (the rule): predicted frame j (j = 0..N-K-1) is taken to show time
t+1+j at the episode's own frame rate, and is compared with recorded frame t+1+j after fitting
it to the reply's size (`fit_frames`: scale to cover, centre-crop, as the node does with inputs).
Decision steps are t = K-1, K-1+S, ... while the whole horizon t+N-K is recorded; an episode
shorter than N frames gets one step at t = K-1 that compares the T-K frames there are. Simulator
episodes made for the node have exactly N frames: one step at t = K-1. Instruction following is
scored where object positions are known (our simulator episodes): the target is found by colour
in the last compared predicted frame and measured against its recorded position then.

The loop is `runtime.run_episode`, as in the planner: `EpisodeEnvironment` (a recorded episode
from any reader in `sim_bridge.data.readers`; one observation per decision step), `NodeAgent` (the
node predicts) and `ReplayRecorder` (scores against the recorded future and writes the run folder);
with `--rerun FILE.rrd`, `RerunSubscriber` also logs every step into a Rerun recording (layout in
`sim_bridge.common.rerun_log`). A user's own agent replays through the same environment and recorder.

Output folder (resumable: rerun the same command after an interruption):

    replay_config.json            settings and node geometry; a rerun must match them
    steps/<episode>/t00000.png    predicted frames side by side; written first
    steps/<episode>/t00000.json   that step's metrics; written last, so it marks the step done
    episodes/<episode>.json       per-episode summary, written after its media: marks it done
    media/<episode>.mp4|.gif      side by side per frame: context | predicted | truth
    media/<episode>.png           contact sheet: per step, context + predicted over context + truth
    steps.json, steps.csv         every step's metrics
    summary.json, summary.csv     per episode and overall

Every file is written through `atomic_files` (a temporary name renamed into place), so a kill at
any moment leaves either the old complete file or the new complete one. The Rerun recording is
written whole by every run, resumed or not: steps finished before are logged from the run folder.

CLI: python -m sim_bridge.apps.replay --episodes PATH --endpoint tcp://127.0.0.1:5555 --out DIR
     [--stride S] [--steps N] [--camera C] [--rerun FILE.rrd]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from foresight_client.client import DEFAULT_ENDPOINT, ForesightClient
from tqdm import tqdm

from sim_bridge.apps.runtime import run_episode
from sim_bridge.common.atomic_files import atomic_path, write_csv, write_json
from sim_bridge.common.imaging import (
    contact_sheet,
    fit_frames,
    fit_point,
    read_image,
    write_gif,
    write_png,
)
from sim_bridge.common.logs import setup_logging
from sim_bridge.common.metrics import psnr, ssim
from sim_bridge.common.rerun_log import RerunLog, episode_path, recording_to, rrd_path
from sim_bridge.common.tables import markdown_table
from sim_bridge.data.episode import Episode
from sim_bridge.simulator.scoring import accepted_tracks, follow_error, follow_tolerance

log = logging.getLogger("sim_bridge.apps.replay")  # the same name when run with -m

CONFIG_FILE = "replay_config.json"
VIEW_SIDE = 256  # media are upscaled (nearest) until a panel is about this many pixels high
GAP = 2  # white pixels between side-by-side panels
STEP_FIELDS = ("episode", "t", "frames_compared", "psnr", "ssim", "follow_error_px", "followed",
               "latency_s", "instruction")
EPISODE_FIELDS = ("episode", "decision_steps", "psnr", "ssim", "follow_rate", "follow_error_px",
                  "skipped")


@dataclass(frozen=True)
class ReplayConfig:
    """What a replay run asks of the node; stored in the run folder and checked on resume."""

    stride: int | None = None  # frames between decision steps; None: the model's horizon N-K
    steps: int | None = None  # sampler steps per request; None: the node's default
    camera: int | str = 0  # camera number or name (see docs/DATA.md)
    seed: int = 0  # sampling seed, the same at every step: a rerun predicts the same frames
    fps: float = 5.0  # media frame rate (BridgeData is recorded at 5 Hz)


@dataclass(frozen=True)
class NodeGeometry:
    """What the node's `info` handshake says about its clips."""

    model: str
    height: int
    width: int
    num_frames: int  # N
    context_frames: int  # K

    @classmethod
    def from_info(cls, info: dict) -> NodeGeometry:
        height, width = info["size"]
        card = info.get("model") or {}
        name = (card.get("card") or {}).get("name") or card.get("name") or "unknown"
        return cls(str(name), int(height), int(width), int(info["num_frames"]),
                   int(info["context_frames"]))

    @property
    def horizon(self) -> int:
        return self.num_frames - self.context_frames


# ---------------------------------------------------------------------------------------------
# Media

def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """uint8 (T, H, W, 3) RGB as MP4: imageio's ffmpeg plugin (H.264) where installed, else
    OpenCV's bundled FFmpeg with the MPEG-4 Part 2 codec (mp4v), which plays in VLC, ffplay and
    browsers' desktop players but not in every web page."""
    frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)))
    with atomic_path(path) as tmp:
        if importlib.util.find_spec("imageio_ffmpeg") is not None:
            import imageio.v3 as iio

            iio.imwrite(tmp, frames, extension=".mp4", fps=fps, plugin="FFMPEG")
            return
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                 (frames.shape[2], frames.shape[1]))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write MP4 (mp4v) to {tmp}")
        try:
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()


def safe_name(episode_id: str) -> str:
    """An episode id as one file name ("a/b/traj0" -> "a__b__traj0")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "__", episode_id).strip("_") or "episode"


# ---------------------------------------------------------------------------------------------
# Steps and scoring

def decision_steps(length: int, geometry: NodeGeometry,
                   stride: int | None) -> list[tuple[int, int]]:
    """(t, frames compared) for an episode of `length` frames, by the rule in the module doc."""
    k, horizon = geometry.context_frames, geometry.horizon
    stride = horizon if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride!r}")
    if length <= k:
        return []
    if length < k + horizon:
        return [(k - 1, length - k)]
    return [(t, horizon) for t in range(k - 1, length - horizon, stride)]


def score_step(pred: np.ndarray, future: np.ndarray, episode: Episode, t: int) -> dict:
    """PSNR/SSIM of the first len(`future`) predicted frames against `future`, the frames
    `episode` recorded after t, and the target's position error in the last of them where the
    episode knows where objects are."""
    h, w = pred.shape[1:3]
    compared = len(future)
    truth = fit_frames(future, h, w)
    scores: dict[str, Any] = {"psnr": psnr(pred[:compared], truth),
                              "ssim": ssim(pred[:compared], truth),
                              "follow_error_px": None, "followed": None}
    positions, colors, target = episode.object_positions, episode.object_colors, episode.target
    if positions and colors and target in positions and target in colors:
        truth_xy = [fit_point(track[t + compared], episode.frames.shape[1:3], (h, w))
                    for track in accepted_tracks(episode)]
        error = follow_error(pred[compared - 1], colors[target], np.stack(truth_xy))
        scores["follow_error_px"] = None if math.isinf(error) else error
        scores["followed"] = bool(error <= follow_tolerance(min(h, w)))
    return scores


def mean_or_none(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are known (booleans count as 0/1); None when none is."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


# ---------------------------------------------------------------------------------------------
# The loop: `runtime.run_episode` with a recorded episode as the environment, the node as the
# agent and one subscriber that scores and stores

class EpisodeEnvironment:
    """A recorded episode as a runtime Environment. Each observation is one decision step: the
    K context frames ending at t, the instruction, and the recorded future the prediction is
    scored against. A prediction cannot change what was recorded, so applying an action only
    moves on. `steps` are the (t, frames compared) still to run: a resumed run leaves out the
    ones it finished before."""

    def __init__(self, episode: Episode, steps: list[tuple[int, int]],
                 context_frames: int) -> None:
        self.episode, self.steps, self.context_frames = episode, steps, context_frames

    def reset(self) -> None:
        self.index = 0

    def is_episode_complete(self) -> bool:
        return self.index >= len(self.steps)

    def get_observation(self) -> dict:
        t, compared = self.steps[self.index]
        frames = self.episode.frames
        return {"context": frames[t - self.context_frames + 1: t + 1],
                "instruction": self.episode.instruction, "t": t, "frames_compared": compared,
                "future": frames[t + 1: t + 1 + compared]}

    def apply_action(self, action: dict) -> None:
        self.index += 1


class NodeAgent:
    """The node behind `client` as a runtime Agent: its action is the predicted future."""

    def __init__(self, client: ForesightClient, config: ReplayConfig) -> None:
        self.client, self.config = client, config

    def get_action(self, observation: dict) -> dict:
        start = time.perf_counter()
        prediction = self.client.predict(observation["context"], observation["instruction"],
                                         steps=self.config.steps, seed=self.config.seed)
        return {"prediction": prediction, "latency_s": time.perf_counter() - start}


class ReplayRecorder:
    """A runtime Subscriber for one episode of a run folder: scores each prediction against the
    recorded future and stores the step (prediction PNG first, metrics JSON last: the mark that
    it is done); at the episode's end writes its media, then its record (episodes/<name>.json,
    the mark that the episode is done). Steps an earlier run finished are loaded, not redone:
    `pending` is what is left. `record` says why the episode is skipped, if it is."""

    def __init__(self, out: Path, episode_id: str, episode: Episode, geometry: NodeGeometry,
                 config: ReplayConfig) -> None:
        self.out, self.episode_id, self.episode = out, episode_id, episode
        self.geometry, self.config = geometry, config
        self.name = safe_name(episode_id)
        self.steps = decision_steps(len(episode.frames), geometry, config.stride)
        self.record: dict[str, Any] = {"episode": episode_id, "instruction": episode.instruction,
                                       "num_frames": len(episode.frames),
                                       "source": episode.meta.get("source"),
                                       "decision_steps": len(self.steps), "skipped": None}
        if not episode.instruction:
            self.record["skipped"] = "no instruction"
        elif not self.steps:
            self.record["skipped"] = (f"{len(episode.frames)} frames: no future after K "
                                      "context frames")
        self.results = {t: stored for t, _ in self.steps
                        if (stored := self._stored(t)) is not None}

    @property
    def pending(self) -> list[tuple[int, int]]:
        if self.record["skipped"]:
            return []
        return [(t, compared) for t, compared in self.steps if t not in self.results]

    def _paths(self, t: int) -> tuple[Path, Path]:
        folder = self.out / "steps" / self.name
        return folder / f"t{t:05d}.png", folder / f"t{t:05d}.json"

    def _stored(self, t: int) -> tuple[np.ndarray, dict] | None:
        png, done = self._paths(t)
        if not (done.is_file() and png.is_file()):
            return None
        pred = np.stack(np.split(read_image(png), self.geometry.horizon, axis=1))
        return pred, json.loads(done.read_text())

    def on_episode_start(self) -> None:
        if self.record["skipped"]:
            log.warning("%s skipped: %s", self.episode_id, self.record["skipped"])

    def on_step(self, observation: dict, action: dict) -> None:
        t, compared, pred = observation["t"], observation["frames_compared"], action["prediction"]
        record = {"episode": self.episode_id, "t": t, "frames_compared": compared,
                  "instruction": observation["instruction"], "latency_s": action["latency_s"],
                  **score_step(pred, observation["future"], self.episode, t)}
        png, done = self._paths(t)
        with atomic_path(png) as tmp:
            write_png(tmp, np.concatenate(list(pred), axis=1))
        write_json(done, record)
        self.results[t] = (pred, record)

    def on_episode_end(self) -> None:
        if not self.record["skipped"]:
            preds = [self.results[t][0] for t, _ in self.steps]
            step_records = [self.results[t][1] for t, _ in self.steps]
            media = write_media(self.out, self.name, self.episode, self.steps, preds,
                                self.geometry.context_frames, self.config.fps)
            self.record |= {
                "psnr": mean_or_none(r["psnr"] for r in step_records),
                "ssim": mean_or_none(r["ssim"] for r in step_records),
                "follow_rate": mean_or_none(r["followed"] for r in step_records),
                "follow_error_px": mean_or_none(r["follow_error_px"] for r in step_records),
                "steps": step_records, "media": media}
        write_json(self.out / "episodes" / f"{self.name}.json", self.record)  # last: done


class RerunSubscriber:
    """A runtime Subscriber logging what `recorder` scored into a Rerun recording, so it comes
    after the recorder in the list: per step t, the context frames ending at frame t, the
    prediction and the recorded truth from frame t+1 on, and the step's metrics at `step` t.
    The steps an earlier run finished are logged at the episode's start (`log_stored`)."""

    def __init__(self, recording: RerunLog, recorder: ReplayRecorder) -> None:
        self.recording, self.recorder = recording, recorder

    def log_stored(self) -> None:
        """The instruction and every step the recorder holds; nothing for a skipped episode."""
        if self.recorder.record["skipped"]:
            return
        self.recording.text(episode_path(self.recorder.episode_id, "instruction"),
                            self.recorder.episode.instruction)
        for t in sorted(self.recorder.results):
            self._log_step(t)

    def on_episode_start(self) -> None:
        self.log_stored()

    def on_step(self, observation: dict, action: dict) -> None:
        self._log_step(observation["t"])

    def on_episode_end(self) -> None:
        pass

    def _log_step(self, t: int) -> None:
        pred, record = self.recorder.results[t]
        h, w = pred.shape[1:3]
        frames, k = self.recorder.episode.frames, self.recorder.geometry.context_frames
        path = episode_path(self.recorder.episode_id)
        self.recording.frames([*path, "context"], fit_frames(frames[t - k + 1: t + 1], h, w),
                              t - k + 1)
        self.recording.frames([*path, "predicted"], pred, t + 1)
        self.recording.frames([*path, "truth"],
                              fit_frames(frames[t + 1: t + 1 + record["frames_compared"]], h, w),
                              t + 1)
        self.recording.scalars([*path, "metrics"], t,
                               {name: record[name] for name in
                                ("psnr", "ssim", "follow_error_px", "followed", "latency_s")})


def write_media(out: Path, name: str, episode: Episode, steps: list[tuple[int, int]],
                preds: list[np.ndarray], context_frames: int, fps: float) -> dict[str, str]:
    """Side-by-side video (MP4 and GIF) and a contact sheet for one episode."""
    h, w = preds[0].shape[1:3]
    k = context_frames
    frames, rows = [], []
    for (t, compared), pred in zip(steps, preds):
        context = fit_frames(episode.frames[t - k + 1: t + 1], h, w)
        truth = fit_frames(episode.frames[t + 1: t + 1 + compared], h, w)
        missing = np.full((len(pred) - compared, h, w, 3), 128, np.uint8)
        truth_padded = np.concatenate([truth, missing])
        for j in range(len(pred)):
            frames.append(_side_by_side([context[-1], pred[j], truth_padded[j]]))
        rows += [np.concatenate([context, pred]), np.concatenate([context, truth])]
    video = np.stack(frames)
    scale = max(1, VIEW_SIDE // h)
    video = np.repeat(np.repeat(video, scale, axis=1), scale, axis=2)
    media = out / "media"
    write_mp4(media / f"{name}.mp4", video, fps)
    with atomic_path(media / f"{name}.gif") as tmp:
        write_gif(tmp, video, fps=fps)
    with atomic_path(media / f"{name}.png") as tmp:
        write_png(tmp, contact_sheet(rows))
    return {kind: f"media/{name}.{kind}" for kind in ("mp4", "gif", "png")}


def _side_by_side(panels: list[np.ndarray]) -> np.ndarray:
    h = panels[0].shape[0]
    gap = np.full((h, GAP, 3), 255, np.uint8)
    return np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)


def check_run_folder(out: Path, geometry: NodeGeometry, config: ReplayConfig) -> None:
    """A run folder belongs to one set of settings: resuming with others would mix results."""
    current = {"config": dataclasses.asdict(config), "node": dataclasses.asdict(geometry)}
    path = out / CONFIG_FILE
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored != current:
            raise ValueError(f"{out} holds a replay with other settings ({stored}); "
                             f"now {current}. Use another --out folder.")
        log.info("resuming the replay in %s", out)
    else:
        write_json(path, current)


def write_summary(out: Path, geometry: NodeGeometry, config: ReplayConfig,
                  records: list[dict]) -> dict:
    """Every step's and every episode's metrics as JSON and CSV, with the overall means."""
    steps = [s for r in records for s in r.get("steps", [])]
    replayed = [r for r in records if not r["skipped"]]
    overall = {"episodes": len(replayed), "skipped": len(records) - len(replayed),
               "decision_steps": len(steps),
               "psnr": mean_or_none(s["psnr"] for s in steps),
               "ssim": mean_or_none(s["ssim"] for s in steps),
               "follow_rate": mean_or_none(s["followed"] for s in steps),
               "follow_error_px": mean_or_none(s["follow_error_px"] for s in steps),
               "latency_s": mean_or_none(s["latency_s"] for s in steps)}
    summary = {"node": dataclasses.asdict(geometry), "config": dataclasses.asdict(config),
               "overall": overall,
               "episodes": [{k: r.get(k) for k in EPISODE_FIELDS + ("media",)} for r in records]}
    write_json(out / "steps.json", steps)
    write_csv(out / "steps.csv", steps, STEP_FIELDS)
    write_json(out / "summary.json", summary)
    write_csv(out / "summary.csv", summary["episodes"] + [{"episode": "ALL", **overall}],
              EPISODE_FIELDS)
    return summary


def run_replay(client: ForesightClient, episodes: Iterable[tuple[str, Episode]],
               out_dir: str | os.PathLike, config: ReplayConfig = ReplayConfig(),
               total: int | None = None, recording: RerunLog | None = None) -> dict:
    """Replay `episodes` ((id, Episode) pairs from any reader) through the node behind `client`
    into the run folder `out_dir`, keeping what an earlier run there finished; returns the
    summary (also written to disk). With `recording`, every episode's steps, finished now or
    before, are logged there too."""
    out = Path(out_dir)
    geometry = NodeGeometry.from_info(client.info())
    check_run_folder(out, geometry, config)
    agent = NodeAgent(client, config)
    records = []
    names: dict[str, str] = {}
    bar = tqdm(episodes, total=total, desc="replay", unit="ep")
    for episode_id, episode in bar:
        name = safe_name(episode_id)
        if names.setdefault(name, episode_id) != episode_id:
            raise ValueError(f"episode ids {names[name]!r} and {episode_id!r} share the "
                             f"file name {name!r}")
        done = out / "episodes" / f"{name}.json"
        if done.is_file():
            records.append(json.loads(done.read_text()))
            if recording is not None:
                stored = ReplayRecorder(out, episode_id, episode, geometry, config)
                RerunSubscriber(recording, stored).log_stored()
            continue
        bar.set_postfix_str(episode_id[-40:])
        recorder = ReplayRecorder(out, episode_id, episode, geometry, config)
        subscribers = [recorder] if recording is None else [recorder,
                                                            RerunSubscriber(recording, recorder)]
        run_episode(EpisodeEnvironment(episode, recorder.pending, geometry.context_frames),
                    agent, subscribers)
        records.append(recorder.record)
    return write_summary(out, geometry, config, records)


def format_table(summary: dict) -> str:
    """The summary as a markdown table, one row per episode and one for all, then why any was skipped."""
    def cell(value: Any, digits: int = 2) -> Any:
        return f"{value:.{digits}f}" if isinstance(value, float) else value

    rows, notes = [], []
    for r in summary["episodes"]:
        if r["skipped"]:
            rows.append((r["episode"], "skipped", "", "", "", ""))
            notes.append(f"{r['episode']} skipped: {r['skipped']}")
            continue
        rows.append((r["episode"], r["decision_steps"], cell(r["psnr"]), cell(r["ssim"], 3),
                     cell(r["follow_rate"]), cell(r["follow_error_px"], 1)))
    o = summary["overall"]
    rows.append(("ALL", o["decision_steps"], cell(o["psnr"]), cell(o["ssim"], 3),
                 cell(o["follow_rate"]), cell(o["follow_error_px"], 1)))
    table = markdown_table(("episode", "steps", "PSNR", "SSIM", "follow", "err px"), rows)
    return "\n".join([table, *notes])


def main(argv: list[str] | None = None) -> None:
    """Replay recorded episodes through a running foresight node and score its predictions."""
    from sim_bridge.data.readers import find_episodes, read_episodes

    parser = argparse.ArgumentParser(prog="python -m sim_bridge.apps.replay", description=main.__doc__)
    parser.add_argument("--episodes", type=Path, required=True,
                        help="an episode or a tree of them: our format, BridgeData raw, "
                             "LeRobot v3, RLDS or ROS bags (docs/DATA.md)")
    parser.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="node endpoint (%(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="run folder; rerun to resume")
    parser.add_argument("--stride", type=int, default=None,
                        help="frames between decision steps (default: the model's horizon N-K)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: node's)")
    parser.add_argument("--camera", type=lambda c: int(c) if c.isdigit() else c, default=0,
                        help="camera: a number, or a name such as a Bridge topic part "
                             "('wrist') or a LeRobot/RLDS image key")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--rerun", type=rrd_path, default=None, metavar="FILE.rrd",
                        help="also write a Rerun recording: context, prediction and truth per "
                             "episode, metrics per step (needs rerun-sdk)")
    args = parser.parse_args(argv)
    setup_logging()
    config = ReplayConfig(stride=args.stride, steps=args.steps, camera=args.camera, seed=args.seed)
    total = len(find_episodes(args.episodes))
    with (recording_to(args.rerun, "foresight-replay") as recording,
          ForesightClient(args.endpoint, timeout_s=args.timeout) as client):
        summary = run_replay(client, read_episodes(args.episodes, args.camera), args.out, config,
                             total, recording)
    print(format_table(summary))
    print(f"metrics: {args.out / 'summary.json'}, {args.out / 'steps.csv'}; "
          f"media: {args.out / 'media'}" + (f"; Rerun: {args.rerun}" if args.rerun else ""))


if __name__ == "__main__":
    main()
