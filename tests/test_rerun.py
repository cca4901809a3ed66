"""Rerun recordings (`--rerun FILE.rrd`) of replay, the planner, `foresight predict` and `foresight
eval`, read back with rerun's own RRD reader: the entity layout, which frames each entity holds on the
`frame` timeline, what the images show, and that the scalars are the numbers the run reports. No
viewer is spawned, no port opened: recordings go to files."""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from test_planner import GEOMETRY, Oracle
from test_replay import Echo, Node, episodes_tree

from foresight.cli import main as foresight_main
from foresight.evaluation import evaluate_variant, log_episodes
from sim_bridge.apps.planner import FIRST_SEED, make_goal
from sim_bridge.apps.planner import main as planner_main
from sim_bridge.apps.replay import main as replay_main
from sim_bridge.common.imaging import write_png
from sim_bridge.common.rerun_log import MISSING, recording_to
from sim_bridge.simulator.tabletop import make_episode
from sim_bridge.simulator.tasks import EVAL_SEEDS

rr = pytest.importorskip("rerun")
from rerun.chunk import RrdReader  # noqa: E402  (after the skip: rerun-sdk is an optional extra)


def read_recording(path: Path) -> tuple[set[str], dict[str, list[dict]]]:
    """The entity paths of the recording's schema, and each entity's rows (its timeline values and
    components) as rerun's reader gives them."""
    store = RrdReader(path).store()
    paths = set(store.schema().entity_paths())  # without the recording's own properties
    rows: dict[str, list[dict]] = defaultdict(list)
    for chunk in store.stream():
        if chunk.entity_path in paths:
            batch = chunk.to_record_batch()
            kept = [name for name in batch.schema.names if name not in ("rerun.controls.RowId", "log_time")]
            rows[chunk.entity_path] += batch.select(kept).to_pylist()
    return paths, rows


def entity(*parts: str) -> str:
    """An entity path as the reader spells it (each part escaped: "sim/e0" stays one part)."""
    return "/" + "/".join(rr.escape_entity_path_part(p) for p in parts)


def timeline(rows: list[dict], name: str) -> list[int]:
    return sorted(row[name] for row in rows)


def image(row: dict) -> np.ndarray:
    """An `rr.Image` row's pixels as uint8 (H, W, 3)."""
    (fmt,) = row["Image:format"]
    (buffer,) = row["Image:buffer"]
    return np.array(buffer, np.uint8).reshape(fmt["height"], fmt["width"], 3)


def scalar_at(rows: list[dict], step: int) -> float:
    (value,) = [row["Scalars:scalars"][0] for row in rows if row["step"] == step]
    return value


def test_replay_recording_holds_every_step_and_survives_a_resume(tmp_path):
    root = episodes_tree(tmp_path / "episodes", bridge_frames=20)  # Bridge: steps at t = 0, 7; sim: t = 0
    out, rrd = tmp_path / "out", tmp_path / "rec" / "replay.rrd"
    node = Echo()
    with Node(node) as endpoint:
        argv = ["--episodes", str(root), "--endpoint", endpoint, "--out", str(out), "--steps", "2"]
        replay_main([*argv, "--rerun", str(rrd)])
        calls = node.calls
        replay_main([*argv, "--rerun", str(tmp_path / "resumed.rrd")])  # every episode done: no request
    assert node.calls == calls == 4
    steps = json.loads((out / "steps.json").read_text())
    paths, rows = read_recording(rrd)
    for episode_id in {s["episode"] for s in steps}:
        ts = [s["t"] for s in steps if s["episode"] == episode_id]
        base = ("episode", episode_id)
        assert {entity(*base, *name.split("/")) for name in ("instruction", "context", "predicted", "truth",
                                                              "metrics/psnr", "metrics/ssim",
                                                              "metrics/latency_s")} <= paths
        assert timeline(rows[entity(*base, "context")], "frame") == ts  # K = 1: frame t
        future = [t + 1 + j for t in ts for j in range(7)]
        assert timeline(rows[entity(*base, "predicted")], "frame") == future
        assert timeline(rows[entity(*base, "truth")], "frame") == future
        context = {row["frame"]: image(row) for row in rows[entity(*base, "context")]}
        for row in rows[entity(*base, "predicted")]:  # Echo repeats the last context frame
            t = max(t for t in ts if t < row["frame"])
            assert np.array_equal(image(row), context[t])
        for name in ("psnr", "ssim", "latency_s"):
            metric = rows[entity(*base, "metrics", name)]
            assert timeline(metric, "step") == ts
            for s in steps:
                if s["episode"] == episode_id:
                    assert scalar_at(metric, s["t"]) == pytest.approx(s[name], rel=1e-12)
    sim = next(s for s in steps if s["episode"].startswith("sim/") and s["follow_error_px"] is not None)
    follow = rows[entity("episode", sim["episode"], "metrics", "follow_error_px")]
    assert scalar_at(follow, sim["t"]) == pytest.approx(sim["follow_error_px"])
    resumed_paths, resumed = read_recording(tmp_path / "resumed.rrd")
    assert resumed_paths == paths
    assert {p: timeline(r, "frame" if "metrics" not in p else "step") for p, r in resumed.items()
            if p in paths and "instruction" not in p} == \
        {p: timeline(r, "frame" if "metrics" not in p else "step") for p, r in rows.items()
         if p in paths and "instruction" not in p}
    assert not list(rrd.parent.glob(".*tmp*"))


def test_planner_recording_holds_candidates_executed_frames_and_goal(tmp_path):
    goal = make_goal(FIRST_SEED, GEOMETRY)
    rrd = tmp_path / "planner.rrd"
    with Node(Oracle(goal.scene)) as endpoint:
        planner_main(["--endpoint", endpoint, "--seeds", "1", "--out", str(tmp_path / "out"),
                      "--candidates", "4", "--budget", "2", "--steps", "2", "--rerun", str(rrd)])
    summary = json.loads((tmp_path / "out" / "planner_summary.json").read_text())
    (step,) = summary["episodes"][0]["steps"]
    paths, rows = read_recording(rrd)
    base = ("episode", f"goal_{FIRST_SEED}")
    assert {entity(*base, *name.split("/")) for name in ("goal", "goal_instruction", "context", "predicted",
                                                          "executed", "instruction", "metrics/distance",
                                                          "metrics/latency_s", "metrics/chose_true_task",
                                                          "metrics/success")} <= paths
    assert {entity(*base, "candidates", text) for text in step["candidates"]} <= paths
    for text in step["candidates"]:
        assert timeline(rows[entity(*base, "candidates", text)], "frame") == list(range(1, 8))
    assert timeline(rows[entity(*base, "predicted")], "frame") == list(range(1, 8))
    assert timeline(rows[entity(*base, "executed")], "frame") == list(range(8))
    assert np.array_equal(image(rows[entity(*base, "goal")][0]), goal.image)
    chosen = step["candidates"].index(step["chosen"])
    assert scalar_at(rows[entity(*base, "metrics", "distance")], 0) == step["distances"][chosen]
    assert scalar_at(rows[entity(*base, "metrics", "latency_s")], 0) == pytest.approx(step["latency_s"])
    assert scalar_at(rows[entity(*base, "metrics", "success")], 1) == 1.0
    assert [row["TextLog:text"] for row in rows[entity(*base, "instruction")]] == [[step["chosen"]]]


def test_predict_recording_holds_each_instruction_and_the_latency(tmp_path, capsys):
    frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    write_png(tmp_path / "ctx.png", frame)
    instructions = ["push the red block left", "pick up the cup"]
    rrd = tmp_path / "predict.rrd"
    foresight_main(["predict", "--model", "tiny-random", "--frames", str(tmp_path / "ctx.png"),
                    "--instruction", instructions[0], "--instruction", instructions[1], "--steps", "2",
                    "--out", str(tmp_path / "pred.gif"), "--rerun", str(rrd)])
    printed = float(re.search(r"in (\d+\.\d+)s", capsys.readouterr().out).group(1))
    paths, rows = read_recording(rrd)
    base = ("episode", "predict")
    assert paths == {entity(*base, "instruction"), entity(*base, "context"), entity(*base, "metrics", "latency_s"),
                     *(entity(*base, "predicted", text) for text in instructions)}
    assert timeline(rows[entity(*base, "context")], "frame") == [0]
    assert np.array_equal(image(rows[entity(*base, "context")][0]), frame)
    for text in instructions:
        assert timeline(rows[entity(*base, "predicted", text)], "frame") == list(range(1, 8))
    assert scalar_at(rows[entity(*base, "metrics", "latency_s")], 0) == pytest.approx(printed, abs=0.006)


def test_without_rerun_sdk_each_command_stops_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rerun", None)  # `import rerun` now fails as if not installed
    rrd = tmp_path / "r.rrd"
    missing = str(tmp_path / "missing")  # would fail differently if any work were started
    for run in (lambda: replay_main(["--episodes", missing, "--out", missing, "--rerun", str(rrd)]),
                lambda: planner_main(["--out", missing, "--rerun", str(rrd)]),
                lambda: foresight_main(["predict", "--frames", missing, "--instruction", "x", "--rerun", str(rrd)]),
                lambda: foresight_main(["eval", "--episodes-dir", missing, "--rerun", str(rrd)])):
        with pytest.raises(SystemExit) as exit_:
            run()
        assert exit_.value.code == 2 and "pip install rerun-sdk" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    with pytest.raises(ImportError, match=re.escape(MISSING)), recording_to(rrd, "foresight-test"):
        pass
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        replay_main(["--episodes", missing, "--out", missing, "--rerun", str(tmp_path / "r.txt")])
    assert "ends in .rrd" in capsys.readouterr().err



def test_eval_recording_holds_each_variants_prediction_beside_the_truth(tmp_path):
    """What `foresight eval --rerun` logs, with the stand-in model in the pipeline's place: the
    per-episode scores average to the variant's reported ones."""
    episodes = [make_episode(EVAL_SEEDS.start + i, size=64, num_frames=8) for i in range(2)]
    rrd = tmp_path / "eval.rrd"
    with recording_to(rrd, "foresight-eval") as recording:
        log_episodes(recording, episodes, context_frames=1)
        report = evaluate_variant(Echo(), episodes, 0, Echo.defaults, recording=recording, variant="aid")
    paths, rows = read_recording(rrd)
    ids = [f"seed_{seed}" for seed in (EVAL_SEEDS.start, EVAL_SEEDS.start + 1)]
    for episode_id, episode in zip(ids, episodes):
        base = ("episode", episode_id)
        assert timeline(rows[entity(*base, "context")], "frame") == [0]
        assert timeline(rows[entity(*base, "predicted", "aid")], "frame") == list(range(1, 8))
        assert timeline(rows[entity(*base, "truth")], "frame") == list(range(1, 8))
        assert [row["TextDocument:text"] for row in rows[entity(*base, "instruction", "aid")]] == \
            [[episode.instruction]]
    for name, reported in (("psnr", "psnr"), ("ssim", "ssim"), ("followed", "follow_rate")):
        per_episode = [scalar_at(rows[entity("episode", i, "metrics", "aid", name)], 0) for i in ids]
        assert np.mean(per_episode) == pytest.approx(report[reported], rel=1e-12)
