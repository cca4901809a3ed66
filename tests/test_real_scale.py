"""`python -m bench.real_scale` on a tiny-width architecture: every stage a user runs on a real SVD
(train, kill and resume, predict, serve, export, ONNX Runtime serving, eval, distillation and the
student's prediction, VLM states and a training step that reads them) passes, so the full-width
rehearsal cannot rot between its runs."""

import json

import pytest
from safetensors import safe_open

from bench.real_scale import TINY, format_report, main

STAGES = ["train", "train-kill", "train-resume", "predict-fp32-m1", "predict-fp32-m2", "predict-bf16-m1",
          "predict-bf16-m2", "serve-bf16", "export-fp32", "export-fp16", "serve-onnxruntime", "eval-bf16",
          "distill", "predict-distilled-bf16", "states-vlm", "train-with-vlm-states"]


@pytest.mark.rehearsal
def test_every_stage_of_the_rehearsal_passes_at_tiny_width(tmp_path):
    code = main(["--width", "tiny", "--dir", str(tmp_path / "folders"), "--out", str(tmp_path / "out"),
                 "--timeout", "400"])
    report = json.loads((tmp_path / "out" / "real_scale.json").read_text())
    assert code == 0, format_report(report)
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == STAGES
    assert stages["train-kill"]["notes"] == {"killed": True}
    assert stages["train-resume"]["notes"]["bit_identical_to_uninterrupted"] is True
    frames = TINY.num_frames - 1  # K = 1 context frame
    assert stages["serve-bf16"]["notes"]["reply_shape"] == [2, frames, TINY.size, TINY.size, 3]
    assert stages["serve-onnxruntime"]["notes"]["reply_shape"] == [1, frames, TINY.size, TINY.size, 3]
    assert all(s["peak_rss_gib"] > 0 for s in report["stages"])
    assert stages["predict-bf16-m2"]["estimate_gib"] > 0 and stages["train"]["estimate_gib"] > 0  # `foresight params`
    assert (tmp_path / "out" / "real_scale.md").read_text().count("| ok |") == len(STAGES)
    with safe_open(tmp_path / "out" / "run-distill" / "model" / "aid.safetensors", "pt") as student:
        assert any("lora_" in k for k in student.keys())  # the student carries its UNet LoRA
    states = json.loads((tmp_path / "out" / "states.json").read_text())
    assert 1 <= len(states) <= TINY.episodes and all(len(v) == 2 for v in states.values())
