"""The distill stage (consistency distillation into a one-branch student with a UNet LoRA), the
LoRA in a model folder, and a distilled folder served and exported like any other."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from foresight.config import AIDConfig, FrameDecoderConfig, UNetLoRAConfig
from foresight.diffusion.edm import Denoiser
from foresight.loading import build_tiny_svd
from foresight.model_dir import TINY_RANDOM_AID, TINY_RANDOM_SVD, load_model_dir, save_model_dir
from foresight.models.aid import AIDModel
from foresight.models.encoders import TextEncoder, bundled_text_encoder_path
from foresight.training.config import load_jobs
from foresight.training.stages import DistillStage, resolve_config

pytestmark = [pytest.mark.xdist_group("distill"), pytest.mark.usefixtures("one_torch_thread")]

STUDENT = replace(TINY_RANDOM_AID, lora=UNetLoRAConfig(rank=4), solver="consistency", steps=2,
                  guidance_frame=1.0, guidance_text=1.0)


@pytest.fixture(scope="module")
def teacher(tiny_random_folder) -> Path:
    """tiny-random's folder as the teacher: s_V 1.5, s_T 3, guided at every level."""
    return tiny_random_folder


def job(tmp: Path, teacher: Path, name: str, steps: int = 2) -> Path:
    data = {"stage": "distill", "out": str(tmp / name), "checkpoint_every": 1, "log_every": 1, "ema_decay": 0.95,
            "model": {"svd": str(teacher.parent / "svd"), "init": str(teacher), "aid": STUDENT.to_dict()},
            "data": {"source": "simulator", "episodes": 16},
            "distill": {"teacher_steps": 10, "skip": 2},
            "optim": {"steps": steps, "batch": 2, "lr": 1e-3, "warmup": 1}, "loss": {"motion_weight": 4.0},
            "validation": {"every": steps, "source": "simulator", "episodes": 1, "steps": 1}}
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def _student_with_lora(seed: int = 0, config: AIDConfig = STUDENT) -> AIDModel:
    text = TextEncoder(bundled_text_encoder_path(), config.text_max_length)
    model = AIDModel(build_tiny_svd(TINY_RANDOM_SVD, seed=0), text, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.unet.unet.named_parameters():
            if ".lora_B." in name:  # B starts at zero (no change); give the LoRA something to do
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _denoise(model: AIDModel, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(2, 1, 3, 64, 64, generator=g) * 2 - 1
    x = torch.randn(2, 8, 4, 16, 16, generator=g)
    with torch.no_grad():
        cond = model.conditions(frames, ["push the red block left", "lift the cube"], [["a", "b"], ["c", "d"]], 8)
        return Denoiser(model.unet)(x, torch.tensor([3.0, 0.5]), cond)


def test_lora_trains_only_its_own_tensors_and_merging_computes_the_same():
    model = _student_with_lora()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n in names if ".lora_" in n}
    assert lora and all(".attn1." in n for n in lora)
    assert not [n for n in names if n.startswith("unet.unet.") and ".lora_" not in n and ".attn2." not in n]
    assert {f"unet.{k.removeprefix('unet.unet.')}" for k in lora} <= model.aid_state_dict().keys()
    plain = _denoise(model)
    model.unet.merge_lora()
    assert model.unet.lora_merged
    merged = _denoise(model)
    assert torch.allclose(plain, merged, atol=1e-5), (plain - merged).abs().max()
    model.unet.unmerge_lora()
    base = AIDModel(build_tiny_svd(TINY_RANDOM_SVD, seed=0), model.text, replace(STUDENT, lora=None))
    base.load_aid_weights({k: v for k, v in model.aid_state_dict().items() if ".lora_" not in k})
    assert not torch.allclose(_denoise(base), plain, atol=1e-4), "the LoRA changed nothing"


def test_a_folder_with_a_lora_loads_merged_and_computes_what_was_saved(tmp_path):
    model = _student_with_lora(seed=1)
    expected = _denoise(model)
    svd = tmp_path / "svd"
    build_tiny_svd(TINY_RANDOM_SVD, seed=0).save_pretrained(svd)
    save_model_dir(model, tmp_path / "model", svd=str(svd))
    saved = load_file(str(tmp_path / "model" / "aid.safetensors"))
    assert any(".lora_A." in k for k in saved) and not any(".base_layer." in k for k in saved)
    loaded = load_model_dir(tmp_path / "model").model
    assert loaded.config.lora == STUDENT.lora and loaded.unet.lora_merged
    assert torch.allclose(_denoise(loaded), expected, atol=1e-5)
    loaded.load_aid_weights(saved)  # loading weights into a merged model re-merges the new LoRA
    assert loaded.unet.lora_merged and torch.allclose(_denoise(loaded), expected, atol=1e-5)
    with pytest.raises(ValueError, match="references its SVD folder"):
        save_model_dir(model, tmp_path / "copy")


def test_distill_loss_falls_on_a_fixed_batch(teacher, tmp_path):
    from diffusers.training_utils import EMAModel

    (cfg,) = load_jobs(str(job(tmp_path, teacher, "fixed")))
    stage = DistillStage(cfg)
    assert (stage.guidance.guidance_frame, stage.guidance.guidance_text) == (1.5, 3.0)  # the teacher's own
    params = [p for p in stage.parameters() if p.requires_grad]
    ema = EMAModel(params, decay=0.95, use_ema_warmup=True)
    stage.use_target(ema, params)
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 8, 3, 64, 64, generator=g) * 2 - 1
    teacher_before = {n: t.clone() for n, t in stage.teacher.items()}
    losses = []
    for _ in range(8):
        loss = stage(video, ["push the red block left", "lift the cube"], [["a", "b"], ["c", "d"]],
                     torch.Generator().manual_seed(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.step(params)
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0] and losses[-1] == min(losses), losses
    assert all(torch.equal(teacher_before[n], stage.teacher[n]) for n in teacher_before)  # the teacher stays
    assert any(not torch.equal(stage.teacher[n], p) for n, p in stage.params.items())


def test_distill_resumes_bit_identically_and_writes_a_student_folder(teacher, tmp_path, caplog, run_job):
    caplog.set_level(logging.INFO, logger="foresight.training.trainer")
    whole = run_job(job(tmp_path, teacher, "whole"))
    assert "step 2 validation: follow_rate" in caplog.text  # the student, sampled as its folder will say
    cut = job(tmp_path, teacher, "cut")
    run_job(cut)
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "checkpoint-2")  # as if killed after step 1
    shutil.rmtree(tmp_path / "cut" / "model")
    resumed = run_job(cut)
    a, b = load_file(str(whole / "aid.safetensors")), load_file(str(resumed / "aid.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the folder: AID weights + the LoRA, no frozen UNet weight; its config names its sampler
    assert sorted(p.name for p in whole.iterdir()) == ["aid.safetensors", "aid_config.json"]
    assert any(".lora_B." in k and a[k].abs().sum() > 0 for k in a)
    assert not [k for k in a if k.startswith("unet.") and ".lora_" not in k and ".attn2." not in k]
    folder = json.loads((whole / "aid_config.json").read_text())
    assert folder["aid"]["solver"] == "consistency" and folder["aid"]["lora"]["rank"] == 4
    ckpt = tmp_path / "whole" / "checkpoints" / "checkpoint-2" / "trainable.safetensors"
    assert not [k for k in load_file(str(ckpt)) if ".base_layer." in k]


def test_a_distilled_folder_predicts_with_one_branch_per_step_and_exports(teacher, tmp_path):
    from foresight.export.build_engines import main
    from foresight.pipeline import load_pipeline

    student = _student_with_lora(seed=2)
    save_model_dir(student, tmp_path / "model", svd=str(teacher.parent / "svd"))
    pipe = load_pipeline(str(tmp_path / "model"))
    calls = []
    pipe.model.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    frames = np.full((1, 64, 64, 3), 90, np.uint8)
    video = pipe.predict(frames, ["lift the cube"], seed=0)
    assert calls == [1, 1], "a consistency student runs one branch per step, its folder's two steps"
    assert np.array_equal(video, pipe.predict(frames, ["lift the cube"], seed=0))
    with contextlib.redirect_stdout(io.StringIO()):
        manifest = main(["--model", str(tmp_path / "model"), "--out", str(tmp_path / "engines"), "--precision",
                         "fp32", "--max-batch", "1"])
    unet = manifest["graphs"]["unet"]
    assert unet["onnx"]["usable"] and unet["onnx"]["check"]["max_rel"] < 1e-4
    import onnx

    graph = onnx.load(str(tmp_path / "engines" / "unet.onnx"), load_external_data=False).graph
    assert not [i.name for i in graph.initializer if "lora" in i.name.lower()], "the LoRA is merged, not traced"


def test_a_distillation_continues_from_its_student_against_the_original_teacher(teacher, tmp_path):
    student = _student_with_lora(seed=3, config=replace(STUDENT, decoder=FrameDecoderConfig(channels=8, blocks=(1, 1, 1))))
    save_model_dir(student, tmp_path / "student", svd=str(teacher.parent / "svd"))
    path = job(tmp_path, teacher, "again")
    data = json.loads(path.read_text())
    data["model"]["init"] = str(tmp_path / "student")
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="already distilled"):
        DistillStage(load_jobs(str(path))[0])
    data["distill"]["teacher"] = str(teacher)
    path.write_text(json.dumps(data))
    (cfg,) = load_jobs(str(path))
    assert cfg.model.aid.decoder is None
    cfg = resolve_config(cfg)
    assert cfg.model.aid.decoder == student.config.decoder  # the job keeps the student's frame decoder
    stage = DistillStage(cfg)
    assert (stage.guidance.guidance_frame, stage.guidance.guidance_text) == (1.5, 3.0)  # the teacher's sampler
    saved = student.aid_state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in stage.model.aid_state_dict().items())  # starts as the student
    own = load_file(str(teacher / "aid.safetensors"))
    checked = 0
    for name, value in stage.teacher.items():
        if ".lora_B." in name:
            assert not value.any()  # the teacher's UNet is the frozen one: its LoRA adds nothing
        for prefix, key in (("model.dqformer.", "dqformer."), ("model.unet.adapters.", "adapters.")):
            if name.startswith(prefix):
                assert torch.equal(value, own[key + name.removeprefix(prefix)]), name
                checked += 1
    assert checked > 10
    assert any(not torch.equal(stage.teacher[n], p) for n, p in stage.params.items())


def test_the_refine_preset_continues_the_shipped_student_against_its_teacher():
    from foresight.model_dir import EMBEDDED

    (cfg,) = load_jobs("tiny-turbo-refine")
    assert cfg.stage == "distill" and cfg.path(cfg.distill.teacher) == EMBEDDED["tiny"]
    assert cfg.path(cfg.model.init) == EMBEDDED["tiny-turbo"]
    shipped = load_model_dir(EMBEDDED["tiny-turbo"]).model.config
    assert resolve_config(cfg).model.aid.decoder == shipped.decoder and cfg.model.aid.lora == shipped.lora
