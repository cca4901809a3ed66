"""Smoke test of the bench plumbing: every section once at tiny sizes; the figures are not checked."""

import json
import subprocess
import sys
import time

from bench.__main__ import main
from bench.core import OtherLoad, fit_growth, measure_side_by_side


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


def test_quick_bench_writes_table_json_and_plot(tmp_path, capsys):
    results = main(["--quick", "--model", "tiny-random", "--threads", "1", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "| section | case | median | min - max | result |" in printed
    assert "torch threads 1, ONNX Runtime intra-op threads 1" in printed
    for section in ("1 vs diffusers", "2 backends", "3 batching", "4 overhead", "5 scaling (torch, in process)", "6 load"):
        assert f"| {section} |" in printed
    assert results["load"]["errors"] == 0
    assert results["load"]["requests"] == 8
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["diffusers"]["stock"]["median_s"] > 0
    assert set(saved["scaling"]) == {"base", "frames", "side", "steps"}
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert (tmp_path / "bench.md").read_text().startswith("Machine:")


BUSY = "import time\nend = time.monotonic() + 1.0\nwhile time.monotonic() < end: pass\n"


def test_other_load_counts_strangers_but_not_the_bench_own_children():
    with OtherLoad() as own_child:
        subprocess.run([sys.executable, "-c", BUSY], check=True)
    # started by a shell that exits at once: the busy process is then no child of ours
    subprocess.run(["sh", "-c", f'"{sys.executable}" -c "$0" &', BUSY], check=True)
    with OtherLoad() as other:
        time.sleep(1.2)
    assert own_child.cores < 0.5
    assert other.cores > 0.5
