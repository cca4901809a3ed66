"""Smoke test of the bench plumbing: every section once at tiny sizes; the figures are not checked."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.__main__ import main
from bench.core import _busy_ticks, fit_growth, measure_side_by_side


def test_fit_growth_names_the_order():
    assert fit_growth([8, 16, 32], [1.0, 2.0, 4.0]).verdict == "~linear"
    quadratic = fit_growth([64, 128, 256], [1.0, 4.0, 16.0])
    assert quadratic.verdict == "~quadratic" and abs(quadratic.per_doubling - 4) < 1e-6
    steps = fit_growth([4, 8, 16], [1.5, 2.5, 4.5])
    assert abs(steps.slope_s - 0.25) < 1e-9 and abs(steps.intercept_s - 0.5) < 1e-9


def test_side_by_side_interleaves_cases_in_rotating_order():
    calls = []
    timings = measure_side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"),
                                    "c": lambda: (calls.append("c"), time.sleep(0.01))}, runs=3, warmup=1)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {name: len(t.times) for name, t in timings.items()} == {"a": 3, "b": 3, "c": 3}
    assert timings["c"].min >= 0.01 > timings["a"].max


def tiny_student(folder: Path) -> Path:
    """A distilled-format folder on tiny-random's SVD: a UNet LoRA, 2 consistency steps, unit scales."""
    from dataclasses import replace

    from foresight.config import UNetLoRAConfig
    from foresight.loading import build_tiny_svd
    from foresight.model_dir import TINY_RANDOM_AID, TINY_RANDOM_SVD, save_model_dir
    from foresight.models.aid import AIDModel
    from foresight.models.encoders import TextEncoder, bundled_text_encoder_path

    config = replace(TINY_RANDOM_AID, lora=UNetLoRAConfig(rank=2), solver="consistency", steps=2,
                     guidance_frame=1.0, guidance_text=1.0)
    build_tiny_svd(TINY_RANDOM_SVD, seed=0).save_pretrained(folder / "svd")
    model = AIDModel(build_tiny_svd(TINY_RANDOM_SVD, seed=0),
                     TextEncoder(bundled_text_encoder_path(), config.text_max_length), config)
    save_model_dir(model, folder / "model", svd=str(folder / "svd"))
    return folder / "model"


def test_quick_bench_writes_table_json_and_plot(tmp_path, capsys):
    student = tiny_student(tmp_path / "student")
    results = main(["--quick", "--model", "tiny-random", "--student", str(student), "--threads", "1",
                    "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "| section | case | median | min - max | result |" in printed
    assert "torch threads 1, ONNX Runtime intra-op threads 1" in printed
    for section in ("1 vs diffusers", "2 backends", "3 batching", "4 overhead", "5 scaling (torch, in process)", "6 load",
                    "8 distilled"):
        assert f"| {section} |" in printed
    assert results["distilled"]["student_steps"] == 2 and results["distilled"]["solver"] == "consistency"
    split = results["distilled"]["split"]["student"]  # where a request's time goes, by graph
    assert split["parts_s"]["unet"] > 0 and split["parts_s"]["vae_decoder"] > 0
    assert split["parts_s"]["rest"] >= 0  # the timed graphs never add up to more than the request
    assert "| 8 distilled | student request in process, by part |" in printed
    assert results["load"]["errors"] == 0
    assert results["load"]["requests"] == 8
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["diffusers"]["stock"]["median_s"] > 0
    assert set(saved["scaling"]) == {"base", "frames", "side", "steps"}
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert (tmp_path / "bench.md").read_text().startswith("Machine:")


BUSY_CPU = "import time\nwhile time.process_time() < 0.5: pass\n"  # half a second of CPU, however long that takes


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_other_load_counts_strangers_but_not_the_bench_own_children():
    """On CPU-time counters, so it holds however busy the machine is (wall-clock load did not)."""
    tick = 1 / os.sysconf("SC_CLK_TCK")
    busy0, own0 = _busy_ticks()
    subprocess.run([sys.executable, "-c", BUSY_CPU], check=True)  # the bench's own child
    busy1, own1 = _busy_ticks()
    assert (own1 - own0) * tick >= 0.4
    # started by a shell that exits at once: the busy process is then no child of ours
    pid = int(subprocess.run(["sh", "-c", f'"{sys.executable}" -c "$0" >/dev/null & echo $!', BUSY_CPU],
                             check=True, capture_output=True, text=True).stdout)
    deadline = time.monotonic() + 120
    while running(pid):
        assert time.monotonic() < deadline, "the stranger process did not end"
        time.sleep(0.05)
    busy2, own2 = _busy_ticks()
    assert (own2 - own1) * tick < 0.3 and (busy2 - busy1) * tick >= 0.4
