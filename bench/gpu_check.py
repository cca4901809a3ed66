"""`python3 -m bench.gpu_check`: the whole GPU path checked with one command on a fresh CUDA machine.

    python3 -m bench.gpu_check                     # ~8 minutes; writes gpu_check/gpu_check.json
    python3 -m bench.gpu_check --skip-install      # reuse the venv of an earlier run
    python3 -m bench.gpu_check --real-scale        # and rehearse every user command at full size (up to 25 min more)

Needs only this repository, Python >= 3.10 and an NVIDIA driver: the runner imports nothing
outside the standard library, and every stage runs in its own process with its own time limit
(kept within a total of TOTAL_LIMIT_S). A stage that fails or runs out of time is recorded with
why and the next one runs; a stage whose input is missing is skipped, saying which. On a machine
without an NVIDIA GPU it says so and exits 0 at once. Stages (STAGES):

  venv       its own venv (gpu_check/venv): the client, then pip install -e .[model,sim,gpu,dev] (CUDA torch, onnxruntime-gpu, TensorRT)
  tests      the GPU-marked tests (pytest -m "gpu or tensorrt")
  engines    fp16 TensorRT engines of the embedded model; each graph (ONNX and TensorRT) checked
             against PyTorch, and one request against the PyTorch fp32 pipeline
  serve      one request through `foresight serve --backend tensorrt --device cuda`
  timing     one request on TensorRT fp16, ONNX Runtime CUDA, PyTorch bf16 and PyTorch bf16 +
             torch.compile, interleaved
  unet_step  one guided UNet step (3 branches) of the real SVD architecture with AID's adapters at
             256x256, 16 frames, random weights built from config, bf16; with its FLOP count and
             the TFLOP/s it reached; beside it a one-clip call, and from the two the distilled
             svd-bridge-turbo's UNet time per request against svd-bridge's (bench.distilled_scale)

The GPU stages were written without a GPU to run them on (see docs/GPU.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable
from xml.etree import ElementTree

REPO = Path(__file__).resolve().parents[1]
TOTAL_LIMIT_S = 480.0
INSTRUCTION = "push the red block to the left"
LOG_TAIL_CHARS = 600


@dataclass(frozen=True)
class Stage:
    """One step of the check. needs: stages that must have passed first; in_venv: run with the venv's python."""

    name: str
    limit_s: float
    what: str
    needs: tuple[str, ...] = ()
    in_venv: bool = True


STAGES = (
    Stage("venv", 190, "venv with CUDA torch, onnxruntime-gpu, TensorRT", in_venv=False),
    Stage("tests", 60, "GPU-marked tests", needs=("venv",)),
    Stage("engines", 80, "fp16 ONNX graphs and TensorRT engines vs PyTorch", needs=("venv",)),
    Stage("serve", 40, "one request through the node on TensorRT", needs=("engines",)),
    Stage("timing", 70, "one request per backend, interleaved", needs=("engines",)),
    Stage("unet_step", 40, "real SVD UNet step, 256x256x16, bf16", needs=("venv",)),
)
# --real-scale: every user command on the real architecture (bench.real_scale --device cuda), on top
# of the eight minutes: the folders alone are 4.2 GB, and each stage loads them afresh
REAL_SCALE = Stage("real_scale", 1500, "every user command at full size, on the GPU", needs=("venv",))


# ---- the runner (standard library only) --------------------------------------------------------
def find_gpus() -> list[str]:
    """The NVIDIA GPUs `nvidia-smi -L` lists; empty without a driver or a GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.startswith("GPU ")] if done.returncode == 0 else []


def _tail(path: Path) -> str:
    text = path.read_text(errors="replace") if path.is_file() else ""
    return " | ".join(line.strip() for line in text[-LOG_TAIL_CHARS:].splitlines() if line.strip())


def run_stage(command: list[str], limit_s: float, log_path: Path, result_path: Path) -> dict:
    """Run one stage's command in its own process group, killed at `limit_s`.

    -> {"status": "passed" | "failed" | "timed_out", "seconds", "reason", "result"}: result is
    the JSON the stage wrote to `result_path` (also after a failure, when it got that far).
    """
    result_path.unlink(missing_ok=True)
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        try:
            code = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    seconds = round(time.monotonic() - start, 2)
    result = json.loads(result_path.read_text()) if result_path.is_file() else None
    if code is None:
        status, reason = "timed_out", f"over its {limit_s:.0f} s limit; last output: {_tail(log_path)}"
    elif code != 0:
        status, reason = "failed", f"exit code {code}; last output: {_tail(log_path)}"
    else:
        status, reason = "passed", None
    return {"status": status, "seconds": seconds, "reason": reason, "result": result}


def run_all(stages: tuple[Stage, ...], command_for: Callable[[Stage], list[str]], workdir: Path,
            total_limit_s: float = TOTAL_LIMIT_S) -> list[dict]:
    """Run the stages in order, each within min(its limit, what is left of the total)."""
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + total_limit_s
    done: dict[str, str] = {}
    records = []
    for stage in stages:
        record = {"stage": stage.name, "what": stage.what, "limit_s": stage.limit_s}
        left = deadline - time.monotonic()
        missing = [need for need in stage.needs if done.get(need) != "passed"]
        if missing:
            record |= {"status": "skipped", "seconds": 0.0, "reason": f"needs {', '.join(missing)}, which did not pass",
                       "result": None}
        elif left < 1:
            record |= {"status": "skipped", "seconds": 0.0, "reason": f"the {total_limit_s:.0f} s total is spent",
                       "result": None}
        else:
            limit = min(stage.limit_s, left)
            print(f"[{stage.name}] {stage.what} (limit {limit:.0f} s) ...", flush=True)
            record |= run_stage(command_for(stage), limit, workdir / "logs" / f"{stage.name}.log",
                                workdir / f"{stage.name}.json")
            record["limit_s"] = limit
        done[stage.name] = record["status"]
        records.append(record)
    return records


def summary(result: dict | None) -> str:
    """The figures of a stage's result worth a table cell."""
    if not result:
        return ""
    keys = ("passed", "failed", "skipped", "backend", "request_s", "max_uint8_diff", "worst_max_rel", "median_s",
            "tflop", "tflop_per_s")
    parts = []
    for key in keys:
        if key in result:
            value = result[key]
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    for name, timing in (result.get("timings") or {}).items():
        parts.append(f"{name} {timing['median_s']:.3f}s")
    if "distilled" in result:
        parts.append(f"distilled/teacher UNet {result['distilled']['ratio']:.3f}x")
    return ", ".join(parts)


def table(records: list[dict]) -> str:
    lines = ["| stage | status | seconds / limit | result | why |", "| --- | --- | --- | --- | --- |"]
    for r in records:
        reason = (r.get("reason") or "").replace("|", "/")[:160]
        lines.append(f"| {r['stage']} | {r['status']} | {r['seconds']:.1f} / {r['limit_s']:.0f} | "
                     f"{summary(r.get('result'))} | {reason} |")
    return "\n".join(lines)


def venv_python(workdir: Path) -> Path:
    return workdir / "venv" / "bin" / "python"


def stage_command(stage: Stage, workdir: Path, torch_index: str | None) -> list[str]:
    """This module run for one stage, by the venv's python (the venv stage: by this one)."""
    python = str(venv_python(workdir)) if stage.in_venv else sys.executable
    extra = ["--torch-index", torch_index] if torch_index else []
    return [python, "-m", "bench.gpu_check", "--stage", stage.name, "--workdir", str(workdir), *extra]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO / "gpu_check", help="venv, engines, logs and the JSON")
    parser.add_argument("--skip-install", action="store_true", help="reuse the venv an earlier run made")
    parser.add_argument("--torch-index", default=None,
                        help="extra pip index for a CUDA torch build (default: PyPI's, which bundles CUDA 12)")
    parser.add_argument("--real-scale", action="store_true",
                        help=f"also rehearse every user command at full size (bench.real_scale; up to "
                             f"{REAL_SCALE.limit_s / 60:.0f} more minutes)")
    parser.add_argument("--stage", choices=[s.name for s in (*STAGES, REAL_SCALE)], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    if args.stage:
        return run_one(args.stage, workdir, args.torch_index)
    gpus = find_gpus()
    if not gpus:
        print("gpu_check: no NVIDIA GPU here (nvidia-smi is missing or lists none); nothing to check.")
        return 0
    workdir.mkdir(parents=True, exist_ok=True)
    stages = STAGES + ((REAL_SCALE,) if args.real_scale else ())
    total_limit_s = TOTAL_LIMIT_S + (REAL_SCALE.limit_s if args.real_scale else 0)
    if args.skip_install:
        if not venv_python(workdir).is_file():
            raise SystemExit(f"--skip-install: no venv at {workdir / 'venv'}; run once without it")
        stages = tuple(s for s in stages if s.name != "venv")

    started = time.time()
    records = run_all(stages, lambda stage: stage_command(stage, workdir, args.torch_index), workdir, total_limit_s)
    if args.skip_install:
        records.insert(0, {"stage": "venv", "what": STAGES[0].what, "limit_s": 0, "status": "skipped", "seconds": 0.0,
                           "reason": "--skip-install", "result": None})
    report = {"gpus": gpus, "started_unix": started, "seconds": round(time.time() - started, 1),
              "total_limit_s": total_limit_s, "stages": records, "limits": [asdict(s) for s in stages]}
    path = workdir / "gpu_check.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(table(records))
    print(f"wrote {path} (stage logs in {workdir / 'logs'})")
    return 0 if all(r["status"] == "passed" for r in records if r["reason"] != "--skip-install") else 1


def run_one(name: str, workdir: Path, torch_index: str | None) -> int:
    """Inside a stage's process: run it, write its JSON, exit 1 unless it passed."""
    result = {"venv": lambda: stage_venv(workdir, torch_index), "tests": lambda: stage_tests(workdir),
              "engines": lambda: stage_engines(workdir), "serve": lambda: stage_serve(workdir),
              "timing": lambda: stage_timing(workdir), "unet_step": stage_unet_step,
              "real_scale": lambda: stage_real_scale(workdir)}[name]()
    (workdir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if result.get("ok") else 1


# ---- the stages --------------------------------------------------------------------------------
def stage_venv(workdir: Path, torch_index: str | None) -> dict:
    venv = workdir / "venv"
    if not venv_python(workdir).is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv_python(workdir)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    index = ["--extra-index-url", torch_index] if torch_index else []
    subprocess.run([*pip, "-e", str(REPO / "packages" / "foresight-client")], check=True)
    subprocess.run([*pip, *index, "-e", f"{REPO}[model,sim,gpu,dev]"], check=True)
    probe = ("import json, torch, onnxruntime, tensorrt; print(json.dumps({'torch': torch.__version__, "
             "'cuda': torch.cuda.is_available(), 'onnxruntime': onnxruntime.__version__, "
             "'providers': onnxruntime.get_available_providers(), 'tensorrt': tensorrt.__version__}))")
    found = json.loads(subprocess.run([str(venv_python(workdir)), "-c", probe], check=True, capture_output=True,
                                      text=True).stdout.strip().splitlines()[-1])
    return {"ok": found["cuda"] and "CUDAExecutionProvider" in found["providers"], **found}


def gpu_test_files() -> list[str]:
    """Test files holding a GPU-marked test (collecting only those keeps unrelated imports out)."""
    marks = ("mark.gpu", "mark.tensorrt")
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                  if any(m in p.read_text() for m in marks))


def junit_counts(path: Path) -> dict:
    suite = ElementTree.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, failed, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    return {"passed": tests - failed - errors - skipped, "failed": failed + errors, "skipped": skipped}


def stage_tests(workdir: Path) -> dict:
    xml = workdir / "tests.xml"
    files = gpu_test_files()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu or tensorrt",
                           f"--junitxml={xml}", *files], cwd=REPO)
    counts = junit_counts(xml) if xml.is_file() else {"passed": 0, "failed": 0, "skipped": 0}
    return {"ok": done.returncode == 0 and counts["passed"] > 0, "files": files, **counts}


def _cuda_model(spec: str = "tiny"):
    from foresight.model_dir import load_model

    loaded = load_model(spec)
    loaded.model.to("cuda").eval()
    return loaded


def stage_engines(workdir: Path) -> dict:
    import numpy as np
    import torch
    from foresight.engines import load_backend
    from foresight.export.build_engines import BuildConfig, backend_runner, build_engines, reference_runners
    from foresight.export.onnx_export import graph_shapes
    from foresight.export.validate import check, reference_cases

    from foresight.pipeline import ForesightPipeline

    out = workdir / "engines"
    manifest = build_engines(BuildConfig(model="tiny", out=out, precision="fp16", max_batch=1, seed=0))
    checks = {}
    for graph, entry in manifest["graphs"].items():
        for kind in ("onnx", "tensorrt"):
            built = entry.get(kind) or {}
            recorded = built.get("check") or {}
            checks[f"{graph} {kind} vs {recorded.get('reference')}"] = {"max_rel": recorded.get("max_rel"),
                                                                        "usable": built.get("usable", False)}
    loaded = _cuda_model()
    model = loaded.model
    trt, info = load_backend(model, "tensorrt", out)
    if trt.name != "tensorrt":
        return {"ok": False, "why": f"TensorRT engines not used: {info['skipped']}", "checks": checks,
                "tensorrt_skipped": manifest["tensorrt_skipped"]}
    cfg, device = model.config, torch.device("cuda")
    shapes = graph_shapes(model, cfg.height, cfg.width)
    frames_max = cfg.num_frames
    torch_run = reference_runners(model)  # the fp32 model, where build_engines compared against its own reference
    for graph, cases in (("unet", [(3, frames_max)]), ("vae_decoder", [(1, frames_max)]),
                         ("vae_encoder", [(1, cfg.context_frames)]), ("dqformer", [(3, frames_max)])):
        stored = reference_cases(torch_run[graph], graph, shapes, cases, device, 1)
        result = check(backend_runner(trt, graph), stored, graph, manifest["graphs"][graph]["precision"], device, 1,
                       "pytorch")
        checks[f"{graph} tensorrt vs pytorch fp32"] = {"max_rel": result["max_rel"], "usable": result["passed"]}
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (cfg.context_frames, cfg.height, cfg.width, 3), dtype=np.uint8)
    a = ForesightPipeline(loaded, backend=trt).predict(frames, [INSTRUCTION], seed=0).astype(int)
    b = ForesightPipeline(loaded).predict(frames, [INSTRUCTION], seed=0).astype(int)
    worst = max(c["max_rel"] for c in checks.values() if c["max_rel"] is not None)
    return {"ok": all(c["usable"] for c in checks.values()), "checks": checks, "worst_max_rel": worst,
            "max_uint8_diff": int(np.abs(a - b).max()), "mean_uint8_diff": float(np.abs(a - b).mean())}


def stage_real_scale(workdir: Path) -> dict:
    """bench.real_scale at full width with the model on the GPU: each stage's result, time and peak RSS."""
    from bench.real_scale import main as rehearse

    out = workdir / "real_scale_out"
    code = rehearse(["--dir", str(workdir / "real_scale"), "--out", str(out), "--device", "cuda", "--timeout", "600"])
    report = json.loads((out / "real_scale.json").read_text())
    return {"ok": code == 0, "total_s": report["total_s"], "peak_rss_gib": report["peak_rss_gib"],
            "stages": {s["stage"]: {"ok": s["ok"], "seconds": s["seconds"], "error": s["error"][-300:]}
                       for s in report["stages"]}}


def stage_serve(workdir: Path) -> dict:
    import numpy as np
    from foresight_client.client import ForesightClient

    from foresight.node.process import running_node

    serve_args = ["--backend", "tensorrt", "--engines", str(workdir / "engines"), "--device", "cuda"]
    with running_node("tiny", workdir / "logs" / "serve_node.log", serve_args, ready_timeout_s=30) as endpoint:
        with ForesightClient(endpoint, timeout_s=30, retries=0) as client:
            info = client.info()
            backend = (info.get("backend") or {}).get("name")
            frames = np.random.default_rng(0).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
            start = time.perf_counter()
            video = client.predict(frames, INSTRUCTION, seed=0)
            seconds = time.perf_counter() - start
    return {"ok": backend == "tensorrt" and video.dtype == np.uint8, "backend": backend, "request_s": seconds,
            "shape": list(video.shape)}


def stage_timing(workdir: Path) -> dict:
    import torch
    from foresight.engines import OrtOptions, load_backend

    from bench.core import measure_side_by_side, random_frames
    from foresight.pipeline import ForesightPipeline, load_pipeline

    engines = workdir / "engines"
    pipes, refused = {}, {}
    for name, kind, options in (("tensorrt_fp16", "tensorrt", OrtOptions()),
                                ("onnxruntime_cuda", "onnxruntime", OrtOptions(providers=("CUDAExecutionProvider",)))):
        loaded = _cuda_model()
        backend, info = load_backend(loaded.model, kind, engines, ort_options=options)
        if backend.name == kind:
            pipes[name] = ForesightPipeline(loaded, backend=backend, backend_info=info)
        else:
            refused[name] = info["skipped"]
    pipes["torch_bf16"] = load_pipeline("tiny", device="cuda", dtype="bf16", backend="torch")
    pipes["torch_bf16_compile"] = load_pipeline("tiny", device="cuda", dtype="bf16", backend="torch", compile=True)
    first = next(iter(pipes.values()))
    frames = random_frames(first.context_frames, first.height, first.width)
    calls = {name: (lambda pipe=pipe: pipe.predict(frames, [INSTRUCTION], seed=0)) for name, pipe in pipes.items()}
    # one warm-up request compiles both UNet shapes (3 guidance branches, and 1 outside the interval)
    timings = measure_side_by_side(calls, runs=3, warmup=1, label="request", sync=torch.cuda.synchronize)
    return {"ok": not refused, "refused": refused, "steps": first.defaults.steps,
            "timings": {name: t.to_dict() for name, t in timings.items()}}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs torch's counter sees in one call of fn (matmuls, convolutions, attention)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def stage_unet_step() -> dict:
    import torch

    from bench.distilled_scale import per_request, real_unet_step_inputs, time_calls

    unet, inputs = real_unet_step_inputs("cuda")
    timings = time_calls(unet, inputs, runs=5, sync=torch.cuda.synchronize)
    timing = timings[3]
    flops = count_flops(lambda: unet(*inputs))
    return {"ok": True, "gpu": torch.cuda.get_device_name(), "batch": 3, "frames": 16, "size": 256,
            "median_s": timing.median, "min_s": timing.min, "tflop": flops / 1e12,
            "tflop_per_s": flops / 1e12 / timing.median, "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
            # the svd-bridge-turbo student's UNet time per request against its svd-bridge teacher's
            "distilled": per_request(timings[1].median, timing.median)}


if __name__ == "__main__":
    sys.exit(main())
