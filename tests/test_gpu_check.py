"""The GPU check's CPU side: stage runner, time limits, skipped stages, the JSON and the no-GPU exit."""

import json
import sys
import time

from bench import gpu_check
from bench.gpu_check import Stage, junit_counts, run_all, run_stage


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper (a container's init may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_no_gpu_says_so_and_exits_0_at_once(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    start = time.monotonic()
    assert gpu_check.main(["--workdir", str(tmp_path / "w")]) == 0
    assert time.monotonic() - start < 2
    assert "no NVIDIA GPU" in capsys.readouterr().out
    assert not (tmp_path / "w").exists()


def test_gpus_are_read_from_nvidia_smi(monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-1)'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_check.find_gpus() == ["GPU 0: NVIDIA H200 (UUID: GPU-1)"]


def test_stage_passes_and_returns_its_json(tmp_path):
    out = tmp_path / "s.json"
    record = run_stage(python(f"open({str(out)!r}, 'w').write('{{\"x\": 1}}')"), 20, tmp_path / "s.log", out)
    assert record["status"] == "passed" and record["result"] == {"x": 1} and record["reason"] is None


def test_failed_stage_says_why_from_its_output(tmp_path):
    record = run_stage(python("import sys; print('engine check failed: max rel 0.2'); sys.exit(3)"), 20,
                       tmp_path / "s.log", tmp_path / "s.json")
    assert record["status"] == "failed" and record["result"] is None
    assert "exit code 3" in record["reason"] and "max rel 0.2" in record["reason"]


def test_stage_over_its_limit_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; "
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('building', flush=True); time.sleep(60)")
    start = time.monotonic()
    record = run_stage(python(code), 2, tmp_path / "s.log", tmp_path / "s.json")
    assert time.monotonic() - start < 10
    assert record["status"] == "timed_out" and "2 s limit" in record["reason"] and "building" in record["reason"]
    time.sleep(0.2)
    assert not alive(int(pid_file.read_text())), "the stage's child outlived the stage"


def test_run_all_skips_what_depends_on_a_failure_and_goes_on(tmp_path):
    stages = (Stage("a", 20, "fails"), Stage("b", 20, "needs a", needs=("a",)), Stage("c", 20, "independent"))
    commands = {"a": python("raise SystemExit(1)"), "c": python("print('ok')")}
    records = run_all(stages, lambda s: commands[s.name], tmp_path)
    assert [r["status"] for r in records] == ["failed", "skipped", "passed"]
    assert records[1]["reason"] == "needs a, which did not pass"
    assert (tmp_path / "logs" / "c.log").read_text().strip() == "ok"


def test_run_all_keeps_every_stage_within_the_total(tmp_path):
    stages = (Stage("slow", 30, "sleeps"), Stage("later", 30, "never starts"))
    start = time.monotonic()
    records = run_all(stages, lambda s: python("import time; time.sleep(30)"), tmp_path, total_limit_s=2)
    assert time.monotonic() - start < 10
    assert records[0]["status"] == "timed_out" and records[0]["limit_s"] <= 2
    assert records[1]["status"] == "skipped" and "total is spent" in records[1]["reason"]


def test_main_writes_one_json_and_prints_one_table(monkeypatch, tmp_path, capsys):
    stages = (Stage("venv", 20, "install", in_venv=False), Stage("engines", 20, "build", needs=("venv",)),
              Stage("timing", 20, "time", needs=("engines",)))
    results = {"venv": {"ok": True, "torch": "2.13"}, "engines": {"ok": True, "worst_max_rel": 0.004}}

    def command(stage, workdir, torch_index):
        if stage.name == "timing":
            return python("raise SystemExit('no CUDA provider')")
        return python(f"open({str(workdir / (stage.name + '.json'))!r}, 'w').write({json.dumps(results[stage.name])!r})")

    monkeypatch.setattr(gpu_check, "find_gpus", lambda: ["GPU 0: test"])
    monkeypatch.setattr(gpu_check, "STAGES", stages)
    monkeypatch.setattr(gpu_check, "stage_command", command)
    assert gpu_check.main(["--workdir", str(tmp_path)]) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["gpus"] == ["GPU 0: test"]
    assert [(s["stage"], s["status"]) for s in report["stages"]] == [
        ("venv", "passed"), ("engines", "passed"), ("timing", "failed")]
    assert report["stages"][1]["result"]["worst_max_rel"] == 0.004
    out = capsys.readouterr().out
    assert "| engines | passed |" in out and "worst_max_rel 0.004" in out and "no CUDA provider" in out


def test_gpu_tests_are_found_and_junit_counted(tmp_path):
    assert "tests/test_engines.py" in gpu_check.gpu_test_files()
    xml = tmp_path / "t.xml"
    xml.write_text('<testsuites><testsuite tests="5" failures="1" errors="1" skipped="1"/></testsuites>')
    assert junit_counts(xml) == {"passed": 2, "failed": 2, "skipped": 1}


def test_stages_fit_the_eight_minutes():
    assert sum(s.limit_s for s in gpu_check.STAGES) <= gpu_check.TOTAL_LIMIT_S == 480
    names = [s.name for s in gpu_check.STAGES]
    assert all(need in names[:i] for i, s in enumerate(gpu_check.STAGES) for need in s.needs)


def test_real_scale_is_opt_in_and_adds_its_own_time(monkeypatch, tmp_path):
    seen = {}

    def run_all(stages, command_for, workdir, total_limit_s=gpu_check.TOTAL_LIMIT_S):
        seen["stages"], seen["total"] = [s.name for s in stages], total_limit_s
        return []

    monkeypatch.setattr(gpu_check, "find_gpus", lambda: ["GPU 0: test"])
    monkeypatch.setattr(gpu_check, "run_all", run_all)
    gpu_check.main(["--workdir", str(tmp_path)])
    assert "real_scale" not in seen["stages"] and seen["total"] == gpu_check.TOTAL_LIMIT_S
    gpu_check.main(["--workdir", str(tmp_path), "--real-scale"])
    assert seen["stages"][-1] == "real_scale"
    assert seen["total"] == gpu_check.TOTAL_LIMIT_S + gpu_check.REAL_SCALE.limit_s
