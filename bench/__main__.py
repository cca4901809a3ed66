"""`python -m bench`: run every section, print the markdown table, write JSON and a PNG.

Thread counts are set explicitly (--threads, default: all cores) for torch and ONNX Runtime
alike, and printed with the CPU model and the load average: PyTorch's thread pool slows down
many times over when another process holds a core, so a figure without them means little.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from bench import backends, diffusers_svd, distilled, fleet, node, report, scaling, training
from bench.core import IDLE_CORES, OtherLoad, Plan, machine_info, set_threads
from bench.models import ModelSource, default_model, default_student
from foresight.node.process import running_node
from foresight.pipeline import ForesightPipeline
from sim_bridge.common.logs import setup_logging

log = logging.getLogger("bench")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="'tiny' (embedded), 'tiny-random' or a model folder (default: tiny if shipped, else tiny-random)")
    parser.add_argument("--student", default=None,
                        help="a distilled model measured against the stock pipeline and the model's node (section 8; "
                             "default: tiny-turbo with tiny, once shipped; 'none' skips it)")
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="folder for bench.json, bench.png, bench.md")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for TensorRT FP16 engines (GPU path untested here)")
    parser.add_argument("--quick", action="store_true", help="smoke run: every section once at tiny sizes")
    parser.add_argument("--fleet", action="store_true",
                        help="only the Ray Serve fleet bench (1 vs 2 replicas; needs ray and ../shared/loopback-only)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


@contextmanager
def section(name: str, loads: dict[str, float]) -> Iterator[None]:
    """Log a section and record how many cores other processes kept busy meanwhile."""
    log.info("section: %s", name)
    with OtherLoad() as meter:
        yield
    loads[name] = meter.cores
    if meter.cores > IDLE_CORES:
        log.warning("other processes kept %.2f cores busy during %s: its figures are skewed", meter.cores, name)


def run(spec: str, plan: Plan, threads: int, device: str, out: Path, student: str | None = None) -> dict:
    """Every section; returns the results (Timing objects inside). The nodes' logs go to `out`."""
    source = ModelSource.of(spec)
    loaded = source.load(device)
    model = loaded.model
    cfg = model.config
    default_steps = plan.default_steps or cfg.steps
    loads: dict[str, float] = {}
    results: dict = {
        "machine": machine_info(threads, device) | {"other_cores_by_section": loads},
        "model": {"spec": spec, "height": cfg.height, "width": cfg.width, "num_frames": cfg.num_frames,
                  "context_frames": cfg.context_frames, "steps": default_steps},
        "plan": asdict(plan),
    }
    with tempfile.TemporaryDirectory(prefix="foresight-bench-") as tmp:
        with section("engine export", loads):
            engines = backends.build(spec, Path(tmp) / "engines", device, max(plan.batch_sizes))
        engine, engine_info = backends.engine_backend(model, engines, threads)
        with section("2 backends", loads):
            results["backends"] = backends.compare(loaded, engine, default_steps, plan, device)
        torch_pipe = ForesightPipeline(loaded)
        engine_pipe = ForesightPipeline(loaded, backend=engine, backend_info=engine_info)
        results["node_backend"] = engine.name  # the node as deployed: the best backend it can load
        serve = ["--device", device, "--threads", str(threads)]
        with running_node(spec, out / "node-torch.log", [*serve, "--backend", "torch"]) as torch_node, \
                running_node(spec, out / f"node-{engine.name}.log",
                             [*serve, "--backend", engine.name, "--engines", str(engines)]) as engine_node:
            node.check_backend(torch_node, "torch")
            node.check_backend(engine_node, engine.name)
            stock = source.stock_pipeline(device)
            with section("1 vs diffusers", loads):
                results["diffusers"] = diffusers_svd.compare(
                    torch_pipe, stock, {"torch": torch_node, engine.name: engine_node}, default_steps, plan)
            with section("3 batching", loads):
                results["batching"] = node.batching(engine_pipe, engine_node, default_steps, plan)
            with section("4 overhead", loads):
                results["overhead"] = node.overhead(engine_pipe, engine_node, default_steps, plan)
            with section("6 load", loads):
                results["load"] = node.load(engine_pipe, engine_node, default_steps, plan)
            if student:
                with section("8 distilled", loads):
                    results["distilled"] = distilled.compare(student, torch_pipe, loaded, engine, stock, engine_node,
                                                             default_steps, plan, device, threads, Path(tmp), out)
    with section("5 scaling", loads):
        results["scaling"] = scaling.series(source, model, default_steps, plan, device)
    if source.svd_dir is not None:
        with section("7 training", loads):
            results["training"] = training.compare(spec, plan, batch=2 if plan.runs == 1 else 8)
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_logging(args.verbose)
    for noisy in ("transformers", "diffusers", "export", "engines", "foresight"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.fleet:
        return {"fleet": fleet.run_isolated(args.out, args.quick)}  # prints its own table
    set_threads(args.threads)
    plan = Plan.quick() if args.quick else Plan()
    spec = args.model or default_model()
    start = time.perf_counter()
    student = default_student(spec) if args.student is None else None if args.student == "none" else args.student
    results = run(spec, plan, args.threads, args.device, args.out, student)
    results["wall_s"] = time.perf_counter() - start
    paths = report.write(results, args.out)
    print()
    print(report.machine_line(results))
    print()
    print(report.markdown(results))
    print()
    for line in report.notes(results):
        print(line)
    if "training" in results:
        print()
        print(training.markdown(results["training"]))
    print(f"\nwall time {results['wall_s']:.0f} s; wrote " + ", ".join(str(p) for p in paths.values()))
    return results


if __name__ == "__main__":
    main()
