"""lerobot's side of `bench/lerobot_conformance.py`; runs in a Python 3.12 venv with lerobot 0.6.

It imports nothing of this project: it is an outside user with lerobot, handed a dataset folder.

    python bench/lerobot_side.py check DATASET WORK   # load, stats, merge, resume, train (ACT, 2 steps)
    python bench/lerobot_side.py write OUT            # a dataset written by lerobot, and its decode

Each prints one line `RESULT <json>`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

VIDEO_BACKEND = "pyav"  # torchcodec needs a matching FFmpeg; PyAV is lerobot's other decoder


def step(results: dict, name: str, fn) -> None:
    """Run one check; record ok, seconds and what it returned or the error's last lines."""
    start = time.perf_counter()
    try:
        results[name] = {"ok": True, **(fn() or {})}
    except Exception as exc:  # a failed check is a result here, not a crash of the recipe
        results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                         "trace": traceback.format_exc().splitlines()[-6:]}
    results[name]["seconds"] = round(time.perf_counter() - start, 1)


def episode_frames(dataset, episode: int, key: str) -> np.ndarray:
    """uint8 (T, H, W, 3) frames of one episode as lerobot decodes them for training."""
    start = dataset.meta.episodes[episode]["dataset_from_index"]
    end = dataset.meta.episodes[episode]["dataset_to_index"]
    frames = [dataset[i][key] for i in range(start, end)]
    return np.stack([(f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for f in frames])


def check(dataset_dir: Path, work: Path) -> dict:
    from lerobot.datasets.dataset_tools import merge_datasets, recompute_stats
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    results: dict = {}
    key = "observation.images.image"

    def load() -> dict:
        ds = LeRobotDataset("local/ours", root=dataset_dir, video_backend=VIDEO_BACKEND)
        frames = episode_frames(ds, 0, key)
        np.save(work / "lerobot_decode_ep0.npy", frames)
        item = ds[0]
        return {"episodes": ds.meta.total_episodes, "frames": len(ds), "keys": sorted(item),
                "stats_features": sorted(ds.meta.stats or {})}

    def stats() -> dict:
        copy = work / "recomputed"
        shutil.copytree(dataset_dir, copy)
        blank = {feature: {stat: np.zeros_like(np.asarray(v)).tolist() for stat, v in by_stat.items()}
                 for feature, by_stat in json.loads((copy / "meta" / "stats.json").read_text()).items()}
        (copy / "meta" / "stats.json").write_text(json.dumps(blank))  # so nothing of ours survives
        ds = recompute_stats(LeRobotDataset("local/recomputed", root=copy, video_backend=VIDEO_BACKEND),
                             skip_image_video=False)
        ours = json.loads((dataset_dir / "meta" / "stats.json").read_text())
        diff, kept = {}, []
        for feature, by_stat in ours.items():
            theirs = {stat: np.asarray(v, np.float64) for stat, v in ds.meta.stats[feature].items()}
            if not any(v.any() for stat, v in theirs.items() if stat != "count"):
                kept.append(feature)  # lerobot left it as it was (blank): it does not recompute it
                continue
            diff[feature] = max(float(np.max(np.abs(theirs[stat] - np.asarray(by_stat[stat], np.float64))))
                                for stat in by_stat if stat in theirs and stat != "count")
        return {"max_abs_diff_by_feature": diff, "not_recomputed_by_lerobot": kept}

    def merge() -> dict:
        second = work / "second"
        shutil.copytree(dataset_dir, second)
        a = LeRobotDataset("local/ours", root=dataset_dir, video_backend=VIDEO_BACKEND)
        b = LeRobotDataset("local/second", root=second, video_backend=VIDEO_BACKEND)
        merged = merge_datasets([a, b], "local/merged", output_dir=work / "merged")
        merged = LeRobotDataset("local/merged", root=work / "merged", video_backend=VIDEO_BACKEND)
        frames = episode_frames(merged, a.meta.total_episodes, key)  # the second copy's first episode
        return {"episodes": merged.meta.total_episodes, "frames": len(merged),
                "second_copy_equals_first": bool(np.array_equal(frames, np.load(work / "lerobot_decode_ep0.npy")))}

    def resume() -> dict:
        copy = work / "resumed"
        shutil.copytree(dataset_dir, copy)
        ds = LeRobotDataset.resume("local/resumed", root=copy, video_backend=VIDEO_BACKEND)
        first = LeRobotDataset("local/ours", root=dataset_dir, video_backend=VIDEO_BACKEND)
        frames = episode_frames(first, 0, key)
        for t, frame in enumerate(frames):
            ds.add_frame({key: frame, "observation.state": first[t]["observation.state"].numpy(),
                          "action": first[t]["action"].numpy(), "task": "resumed by lerobot"})
        ds.save_episode()
        ds.finalize()
        reopened = LeRobotDataset("local/resumed", root=copy, video_backend=VIDEO_BACKEND)
        last = reopened.meta.total_episodes - 1
        return {"episodes": reopened.meta.total_episodes, "frames": len(reopened),
                "last_task": reopened[reopened.meta.episodes[last]["dataset_from_index"]]["task"]}

    def train() -> dict:
        out = work / "train"
        command = [str(Path(sys.executable).parent / "lerobot-train"), "--dataset.repo_id=local/ours",
                   f"--dataset.root={dataset_dir}", f"--dataset.video_backend={VIDEO_BACKEND}",
                   "--policy.type=act", "--policy.device=cpu", "--policy.push_to_hub=false",
                   "--policy.pretrained_backbone_weights=null",  # no download: a fresh ResNet-18
                   "--steps=2", "--batch_size=2", "--num_workers=0", "--log_freq=1", "--save_checkpoint=false",
                   "--wandb.enable=false", f"--output_dir={out}"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"lerobot-train exited {done.returncode}: " + done.stderr[-1500:])
        losses = [line for line in (done.stdout + done.stderr).splitlines() if "loss" in line]
        return {"command": " ".join(command[1:]), "last_log": losses[-1][-200:] if losses else ""}

    step(results, "load", load)
    step(results, "recompute_stats", stats)
    step(results, "merge", merge)
    step(results, "resume", resume)
    step(results, "train_act_2_steps", train)
    return results


def write(out: Path) -> dict:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    key = "observation.images.image"
    features = {key: {"dtype": "video", "shape": (64, 64, 3), "names": ["height", "width", "channels"]},
                "observation.state": {"dtype": "float32", "shape": (3,), "names": ["x", "y", "z"]},
                "action": {"dtype": "float32", "shape": (3,), "names": ["dx", "dy", "dz"]}}
    ds = LeRobotDataset.create("local/theirs", fps=10, features=features, root=out / "dataset",
                               use_videos=True, video_backend=VIDEO_BACKEND)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64]
    for episode, task in enumerate(["push the red block left", "lift the blue cup"]):
        for t in range(12):
            frame = np.stack([(x * 4 + t * 9) % 256, (y * 4 + episode * 50) % 256,
                              np.full_like(x, 40 * t % 256)], axis=-1).astype(np.uint8)
            ds.add_frame({key: frame, "observation.state": rng.normal(size=3).astype(np.float32),
                          "action": rng.normal(size=3).astype(np.float32), "task": task})
        ds.save_episode()
    ds.finalize()
    reread = LeRobotDataset("local/theirs", root=out / "dataset", video_backend=VIDEO_BACKEND)
    for e in range(reread.meta.total_episodes):
        np.save(out / f"decode_ep{e}.npy", episode_frames(reread, e, key))
        start, end = reread.meta.episodes[e]["dataset_from_index"], reread.meta.episodes[e]["dataset_to_index"]
        np.save(out / f"state_ep{e}.npy", np.stack([reread[i]["observation.state"].numpy() for i in range(start, end)]))
        np.save(out / f"action_ep{e}.npy", np.stack([reread[i]["action"].numpy() for i in range(start, end)]))
    return {"episodes": reread.meta.total_episodes, "tasks": [reread.meta.episodes[e]["tasks"][0]
                                                              for e in range(reread.meta.total_episodes)]}


if __name__ == "__main__":
    import lerobot

    mode, *paths = sys.argv[1:]
    result = check(Path(paths[0]), Path(paths[1])) if mode == "check" else write(Path(paths[0]))
    print("RESULT " + json.dumps({"lerobot": getattr(lerobot, "__version__", "?"), **result}))
