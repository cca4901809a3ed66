"""The accelerate trainer on a tiny random SVD folder: resume, trainable-only checkpoints, mixed
precision, learning on a fixed clip, and two data-parallel processes that stay identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from foresight.loading import build_tiny_svd
from foresight.model_dir import TINY_RANDOM_AID, TINY_RANDOM_SVD, load_model_dir
from foresight.states import TemplateDecomposer
from foresight.training.config import load_jobs
from foresight.training.data import RecordedEpisodes
from foresight.training.loss import aid_loss
from foresight.training.stages import AIDStage
from foresight.training.trainer import cast_frozen
from sim_bridge.common.imaging import fit_frames

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def svd_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("svd")
    build_tiny_svd(TINY_RANDOM_SVD, seed=0).save_pretrained(folder)
    return folder


def bridge_tree(root: Path, trajectories: int = 2, frames: int = 8) -> Path:
    """A BridgeData V2 raw tree: raw/traj_group0/traj<i>/images0/im_<t>.jpg + lang.txt."""
    y, x = np.mgrid[0:96, 0:128]
    for i in range(trajectories):
        folder = root / "raw" / "traj_group0" / f"traj{i}"
        (folder / "images0").mkdir(parents=True)
        for t in range(frames):
            image = np.stack([(x + 12 * t + 40 * i) % 256, (y * 2) % 256, np.full_like(x, 90 + 40 * i)], -1)
            cv2.imwrite(str(folder / "images0" / f"im_{t}.jpg"), image.astype(np.uint8))
        (folder / "lang.txt").write_text(f"move the block {'left' if i % 2 else 'right'}\nconfidence: 1\n")
    return root


def job(tmp: Path, svd: Path, name: str, **sections) -> Path:
    """A job file for the aid stage on the tiny random SVD; `sections` update its tables."""
    data = {"stage": "aid", "out": str(tmp / name), "checkpoint_every": 2, "log_every": 1,
            "model": {"svd": str(svd), "aid": TINY_RANDOM_AID.to_dict()},
            "data": {"source": "simulator", "episodes": 16},
            "optim": {"steps": 4, "batch": 1, "lr": 1e-3, "warmup": 1}, "loss": {}}
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def test_resumed_run_equals_uninterrupted_run(tmp_path, svd_folder, run_job):
    whole = run_job(job(tmp_path, svd_folder, "whole", ema_decay=0.9))
    cut = job(tmp_path, svd_folder, "cut", ema_decay=0.9)
    run_job(cut)
    # as if killed after the checkpoint of step 2
    import shutil

    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "checkpoint-4")
    shutil.rmtree(tmp_path / "cut" / "model")
    resumed = run_job(cut)
    a, b = load_file(str(whole / "aid.safetensors")), load_file(str(resumed / "aid.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(str(tmp_path / "cut" / "checkpoints" / "checkpoint-2" / "trainable.safetensors"))
    assert any(not torch.equal(start[f"model.{k}"], a[k]) for k in a if f"model.{k}" in start)


def test_checkpoints_and_outputs_hold_only_trained_weights(tmp_path, svd_folder, run_job):
    out = run_job(job(tmp_path, svd_folder, "run"))
    model = load_model_dir(out).model
    trained = {k for k, p in model.named_parameters() if p.requires_grad}
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint-4"
    saved = load_file(str(ckpt / "trainable.safetensors"))
    assert {k.removeprefix("model.") for k in saved} == trained
    assert not [k for k in saved if any(part in k for part in (".vae.", ".vision.", ".text."))]
    assert all(".attn2." in k for k in saved if k.startswith("model.unet.unet."))
    frozen_bytes = sum(p.numel() * 4 for k, p in model.named_parameters() if not p.requires_grad)
    ckpt_bytes = sum(f.stat().st_size for f in ckpt.iterdir())
    assert ckpt_bytes < 0.1 * frozen_bytes, (ckpt_bytes, frozen_bytes)
    assert sorted(p.name for p in out.iterdir()) == ["aid.safetensors", "aid_config.json"]
    assert load_file(str(out / "aid.safetensors")).keys() == model.aid_state_dict().keys()
    spec = json.loads((out / "aid_config.json").read_text())
    assert spec["svd"] == str(svd_folder) and spec["states"] == "template"
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert resolved["optim"]["steps"] == 4 and resolved["mixed_precision"] == "no"


def test_bf16_autocast_step_moves_only_trainable_fp32_weights(svd_folder, tmp_path):
    (cfg,) = load_jobs(str(job(tmp_path, svd_folder, "bf16", mixed_precision="bf16")))
    stage = AIDStage(cfg)
    params = cast_frozen(stage, torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in params)
    frozen = {k: p.detach().clone() for k, p in stage.named_parameters() if not p.requires_grad}
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen.values())
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-3)
    video = torch.rand(2, 8, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = stage(video, ["push the red block left", "pick up the cup"], [["a", "b"], ["c", "d"]],
                     torch.Generator().manual_seed(1))
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    now = dict(stage.named_parameters())
    assert all(torch.equal(frozen[k], now[k]) for k in frozen)
    assert all(p.grad is None for k, p in now.items() if k in frozen)
    assert sum(not torch.equal(b, p) for b, p in zip(before, params)) > len(params) // 2


def test_loss_falls_on_a_fixed_recorded_clip(tmp_path, svd_folder, run_job):
    """One 8-frame Bridge trajectory is one fixed clip; the loss on it, with fixed noise, must fall."""
    tree = bridge_tree(tmp_path / "bridge", trajectories=1)
    path = job(tmp_path, svd_folder, "fit", data={"source": str(tree)}, checkpoint_every=100,
               optim={"steps": 40, "batch": 2, "lr": 1e-2, "warmup": 1}, loss={"p_mean": 0.0, "p_std": 0.5})
    (cfg,) = load_jobs(str(path))

    def fixed_loss(stage: AIDStage) -> float:
        ep = RecordedEpisodes(str(tree)).load(0)
        video = torch.from_numpy(fit_frames(ep.frames, 64, 64)).permute(0, 3, 1, 2).float()[None] / 127.5 - 1
        states = [TemplateDecomposer(2)(ep.instruction)]
        with torch.no_grad():
            return float(np.mean([aid_loss(stage.model, video, [ep.instruction], states,
                                           generator=torch.Generator().manual_seed(s)).item() for s in range(8)]))

    torch.manual_seed(0)
    before = fixed_loss(AIDStage(cfg).eval())
    out = run_job(path)
    stage = AIDStage(cfg).eval()
    stage.model.load_aid_weights(out / "aid.safetensors")
    after = fixed_loss(stage)
    assert after < 0.8 * before, (before, after)


@pytest.mark.slow
def test_two_processes_hold_identical_weights(tmp_path, svd_folder):
    """`accelerate launch --multi_gpu --num_processes 2` (torchrun underneath; gloo on CPU) over a
    BridgeData raw tree. The trainer compares every trained tensor across processes after each
    step and fails if any differ."""
    tree = bridge_tree(tmp_path / "bridge", trajectories=3)
    path = job(tmp_path, svd_folder, "ddp", data={"source": str(tree)}, optim={"steps": 3, "batch": 1})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "foresight.cli", "-v", "train", str(path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    spec = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert spec["data"]["source"] == str(tree)
    assert (tmp_path / "ddp" / "model" / "aid.safetensors").is_file()
    ckpt = tmp_path / "ddp" / "checkpoints" / "checkpoint-3"
    assert (ckpt / "random_states_1.pkl").is_file(), "the second process did not take part"
    steps = [line for line in done.stderr.splitlines() if "replicas agree" in line]
    assert len(steps) == 3, done.stderr[-3000:]


def test_gradient_checkpointing_gives_the_same_gradients(svd_folder, tmp_path):
    (cfg,) = load_jobs(str(job(tmp_path, svd_folder, "ckpt")))
    video = torch.rand(1, 8, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    grads = []
    for checkpointing in (False, True):
        stage = AIDStage(cfg)
        if checkpointing:
            stage.enable_gradient_checkpointing()
        loss = stage(video, ["push the red block left"], [["a", "b"]], torch.Generator().manual_seed(1))
        loss.backward()
        grads.append({k: p.grad for k, p in stage.named_parameters() if p.requires_grad})
    plain, recomputed = grads
    assert all(recomputed[k] is not None and torch.allclose(plain[k], recomputed[k], atol=1e-6) for k in plain)


def test_lerobot_dataset_from_the_simulator_trains_through_the_data_path(tmp_path, svd_folder, run_job):
    """Issue 24: a LeRobot v3 dataset written by `python -m sim_bridge.simulator.tabletop --format lerobot`
    feeds the trainer through the same episode readers as every other format."""
    from sim_bridge.simulator.tabletop import main as simulate

    dataset = tmp_path / "lerobot"
    simulate(["--n", "3", "--seed", "0", "--size", "64", "--frames", "10", "--out", str(dataset),
              "--format", "lerobot"])
    out = run_job(job(tmp_path, svd_folder, "lerobot", data={"source": str(dataset)}))
    logged = json.loads((tmp_path / "lerobot" / "stats.json").read_text())
    assert logged["steps"] == 4 and np.isfinite(logged["final_loss"])
    assert load_file(str(out / "aid.safetensors")).keys() == load_model_dir(out).model.aid_state_dict().keys()


def test_continuation_starts_from_a_model_folder_and_adds_the_sentence_token(tmp_path, svd_folder, run_job):
    """Issue 22: a stage continues a finished model (model.init); a part the folder lacks (here the
    sentence token) starts zero-initialised, and a folder with parts this config lacks is refused."""
    aid = TINY_RANDOM_AID.to_dict()
    aid["dqformer"]["sentence_token"] = False
    first = run_job(job(tmp_path, svd_folder, "first", model={"svd": str(svd_folder), "aid": aid}))
    aid["dqformer"]["sentence_token"] = True
    (cfg,) = load_jobs(str(job(tmp_path, svd_folder, "next", model={"init": str(first), "aid": aid})))
    state = AIDStage(cfg).model.aid_state_dict()
    trained = load_file(str(first / "aid.safetensors"))
    assert state.keys() - trained.keys() == {"dqformer.sentence_proj.weight", "dqformer.sentence_proj.bias"}
    assert all(torch.equal(state[k], v) for k, v in trained.items())
    assert not state["dqformer.sentence_proj.weight"].any()
    aid["adapters"] = None
    (cfg,) = load_jobs(str(job(tmp_path, svd_folder, "less", model={"init": str(first), "aid": aid})))
    with pytest.raises(ValueError, match="unexpected.*adapters"):
        AIDStage(cfg)


def test_validation_scores_simulator_and_recorded_episodes(tmp_path):
    """The trainer's periodic validation, both sources: seeded scores (the same seed gives the same
    numbers, another seed other ones) and a picture with one row per episode."""
    from foresight.model_dir import build_tiny_random
    from foresight.training.config import ValidationConfig
    from foresight.training.validation import validate

    model = build_tiny_random()
    simulator = ValidationConfig(every=1, source="simulator", episodes=2, steps=1)
    metrics, sheet = validate(model, simulator, 0)
    assert set(metrics) == {"follow_rate", "psnr", "ssim"} and metrics["follow_rate"] in (0.0, 0.5, 1.0)
    # two rows of context + 7 predicted frames (gap 2), a white bar of 8, the recorded last frame; x2
    assert sheet.shape == (2 * (2 * 64 + 2), 2 * (8 * 64 + 7 * 2 + 8 + 64), 3)
    assert validate(model, simulator, 0)[0] == metrics
    recorded = ValidationConfig(every=1, source=str(bridge_tree(tmp_path)), episodes=2, steps=1)
    metrics, sheet = validate(model, recorded, 0)
    assert set(metrics) == {"psnr", "ssim"} and sheet.shape == (260, 1196, 3)
    assert validate(model, recorded, 0)[0] == metrics
    assert validate(model, recorded, 1)[0]["psnr"] != metrics["psnr"]


def test_the_recorded_command_is_the_one_a_user_types(monkeypatch):
    from foresight.training.trainer import command_line

    monkeypatch.setattr("sys.argv", ["/repo/foresight/cli.py", "train", "tiny-turbo", "--out", "runs/t"])
    assert command_line() == "foresight train tiny-turbo --out runs/t"  # python -m foresight.cli
    monkeypatch.setattr("sys.argv", ["/venv/bin/foresight", "train", "--set", "data.source=my data"])
    assert command_line() == "foresight train --set 'data.source=my data'"
