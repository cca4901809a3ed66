"""Turn the results into a markdown table (for the README), a JSON file and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.core import IDLE_CORES, Growth, Timing
from bench.distilled import TARGET_TO_STOCK, TARGET_TO_TEACHER

SHORT = {"onnxruntime": "ORT", "tensorrt": "TRT"}  # bar labels
HEADER = "| section | case | median | min - max | result |\n| --- | --- | --- | --- | --- |"


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.2f} s" if abs(seconds) >= 1 else f"{seconds * 1e3:.1f} ms"


def spread(t: Timing) -> str:
    return f"{fmt(t.min)} - {fmt(t.max)}"


def row(section: str, case: str, t: Timing | None, result: str = "") -> str:
    return f"| {section} | {case} | {fmt(t.median) if t else '-'} | {spread(t) if t else '-'} | {result} |"


def target(value: float, limit: float, at_most: bool) -> str:
    met = value <= limit if at_most else value >= limit
    return f"target {'<=' if at_most else '>='} {limit:g}x: {'met' if met else 'MISSED'}"


def diffusers_rows(d: dict) -> list[str]:
    s = "1 vs diffusers"
    g = d["stock_guidance"]
    rows = [row(s, f"stock `StableVideoDiffusionPipeline`, {d['equal_steps']} steps, CFG {g['min_guidance_scale']:g}->"
                   f"{g['max_guidance_scale']:g} (2 branches)", d["stock"], "reference")]
    for r in d["node"].values():
        default = " (model default)" if r["steps"] == d["default_steps"] else ""
        limit = 0.8 if r["steps"] == d["equal_steps"] else 0.25
        branches = f"3 branches on {r['guided_steps']} of {r['steps']} steps, 1 on the rest"
        rows.append(row(s, f"node via ZeroMQ, {r['backend']}, {r['steps']} steps{default}, {branches}", r["timing"],
                        f"{r['ratio_to_stock']:.2f}x stock ({target(r['ratio_to_stock'], limit, True)})"))
    return rows


def distilled_rows(d: dict) -> list[str]:
    s, t = "8 distilled", d["timings"]
    dec = d["decoders"]
    return [
        row(s, f"stock `StableVideoDiffusionPipeline`, {d['stock_steps']} steps", t["stock"], f"reference; medians of {len(t['stock'].times)} interleaved runs"),
        row(s, f"teacher node, {d['backend']}, {d['teacher_steps']} steps (its default), {dec['teacher']}",
            t["teacher"], f"{t['teacher'].median / t['stock'].median:.2f}x stock"),
        row(s, f"student node ({d['student']}), {d['backend']}, {d['student_steps']} {d['solver']} steps, 1 branch, "
               f"{dec['student']}",
            t["student"], f"{d['ratio_to_stock']:.3f}x stock ({target(d['ratio_to_stock'], TARGET_TO_STOCK, True)}); "
                          f"{d['ratio_to_teacher']:.2f}x teacher ({target(d['ratio_to_teacher'], TARGET_TO_TEACHER, True)})"),
    ] + [split_row(s, name, d["split"][name], d["split"]["teacher"]["total_s"]) for name in ("teacher", "student")]


def split_row(section: str, name: str, split: dict, teacher_s: float) -> str:
    """Where one in-process request's time goes; beside the student, its time without the UNet
    against the teacher's whole request: the ratio no step count can go below."""
    parts = split["parts_s"]
    text = ", ".join(f"{part} {fmt(seconds)}" for part, seconds in parts.items())
    floor = (split["total_s"] - parts.get("unet", 0.0)) / teacher_s
    return (f"| {section} | {name} request in process, by part | {fmt(split['total_s'])} | - | {text}"
            + (f"; without the UNet {floor:.2f}x teacher |" if name == "student" else " |"))


def backend_rows(b: dict) -> list[str]:
    s, e = "2 backends", b["engine"]
    return [
        row(s, "UNet step (3 branches), torch eager", b["step"]["torch"]),
        row(s, f"UNet step (3 branches), {e}", b["step"][e],
            f"{b['step_speedup']:.2f}x faster ({target(b['step_speedup'], 1.5, False)}), max abs diff {b['step_max_abs_diff']:.1e}"),
        row(s, f"request ({b['steps']} steps), torch eager", b["request"]["torch"]),
        row(s, f"request ({b['steps']} steps), {e}", b["request"][e],
            f"{b['request_speedup']:.2f}x faster ({target(b['request_speedup'], 1.5, False)}), "
            f"max diff {b['request_max_uint8_diff']} uint8 levels"),
    ]


def batching_rows(rows_in: list[dict], backend: str) -> list[str]:
    s, rows = "3 batching", []
    for r in rows_in:
        m = r["m"]
        rows.append(row(s, f"1 request x {m} instruction(s) ({backend})", r["one_request"]))
        rows.append(row(s, f"{m} request(s) x 1 instruction", r["separate"], f"{m} separate requests take {r['speedup']:.2f}x the time of one with {m}"))
    return rows


def overhead_rows(o: dict, backend: str) -> list[str]:
    s = "4 overhead"
    return [
        row(s, f"in-process `predict` ({o['steps']} steps, {backend}, 480x640 frames in)", o["in_process"]),
        row(s, "node round trip (REQ client, tcp loopback)", o["round_trip"],
            f"overhead {fmt(o['overhead_s'])} = {o['overhead_share']:.1%} of the request; paired "
            f"(round trip - node's model time): {fmt(o['paired_overhead'].median)} = {o['paired_share']:.1%}"),
    ]


def growth_text(axis: str, g: Growth) -> str:
    unit = {"frames": "frames", "side": "side length", "steps": "steps"}[axis]
    text = f"x{g.per_doubling:.2f} per doubling of {unit}: {g.verdict} (t ~ {unit}^{g.exponent:.2f})"
    if axis == "side":
        text += f", i.e. pixels^{g.exponent / 2:.2f}"
    if axis == "steps":
        text += f"; linear fit {fmt(g.slope_s)}/step + {fmt(g.intercept_s)} fixed"
    return text


def scaling_rows(sc: dict) -> list[str]:
    s, base, rows = "5 scaling (torch, in process)", sc["base"], []
    for axis in ("frames", "side", "steps"):
        points = sc[axis]["points"]
        for i, p in enumerate(points):
            case = {"frames": f"{p['x']} frames, {base['height']}x{base['width']}, {p['steps']} steps",
                    "side": f"{p['x']}x{p['x']}, {base['num_frames']} frames, {p['steps']} steps",
                    "steps": f"{p['x']} steps, {base['height']}x{base['width']}, {base['num_frames']} frames"}[axis]
            rows.append(row(s, case, p["timing"], growth_text(axis, sc[axis]["growth"]) if i == len(points) - 1 else ""))
    return rows


def load_rows(ld: dict, backend: str) -> list[str]:
    result = (f"{ld['throughput_rps']:.2f} req/s, p50 {fmt(ld['p50_s'])}, p99 {fmt(ld['p99_s'])}, "
              f"errors {ld['errors']}, mean batch {ld['mean_batch'] or 0:.1f}")
    return [f"| 6 load | {ld['clients']} concurrent clients, {ld['requests']} requests, {ld['steps']} steps ({backend}) "
            f"| {fmt(ld['p50_s'])} | {fmt(ld['min_s'])} - {fmt(ld['max_s'])} | {result} |"]


def markdown(results: dict) -> str:
    backend = results["node_backend"]
    rows = [HEADER]
    rows += diffusers_rows(results["diffusers"])
    rows += backend_rows(results["backends"])
    rows += batching_rows(results["batching"], backend)
    rows += overhead_rows(results["overhead"], backend)
    rows += scaling_rows(results["scaling"])
    rows += load_rows(results["load"], backend)
    if "distilled" in results:
        rows += distilled_rows(results["distilled"])
    return "\n".join(rows)


def machine_line(results: dict) -> str:
    m, model = results["machine"], results["model"]
    loads = m["other_cores_by_section"]
    busiest = max(loads, key=loads.get)
    state = (f"other processes kept at most {loads[busiest]:.2f} cores busy during a section ({busiest}): "
             + ("idle" if loads[busiest] <= IDLE_CORES else "LOADED, figures of the sections over "
                f"{IDLE_CORES} cores are skewed: " + ", ".join(k for k, v in loads.items() if v > IDLE_CORES)))
    bf16 = {True: "with", False: "without", None: "unknown"}[m.get("bf16_instructions")]
    return (f"Machine: {m['cpu']}, {m['cores']} cores ({bf16} bf16 instructions), device {m['device']}"
            f"{', ' + m['gpu'] if 'gpu' in m else ''}; "
            f"torch threads {m['torch_threads']}, ONNX Runtime intra-op threads {m['ort_intra_op_threads']} "
            f"(set explicitly, the same for both sides of every ratio); {state}. Versions: "
            + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
            + f".\nModel: {model['spec']}, {model['height']}x{model['width']}, N={model['num_frames']}, "
            f"K={model['context_frames']}, default {model['steps']} steps; medians of {results['plan']['runs']} runs "
            f"after {results['plan']['warmup']} warm-up(s); the cases of sections 1-4 run interleaved (one run of "
            f"each in turn), so a ratio compares runs taken under the same machine conditions.")


def notes(results: dict) -> list[str]:
    """Where the time goes, from the one-request profiles, and what a GPU would change."""
    d = results["diffusers"]
    st, ours = d["profile"]["stock"], d["profile"]["ours_torch"]
    lines = [
        f"Profile, one request at {d['equal_steps']} steps, PyTorch: stock pipeline {fmt(st['total_s'])} = "
        f"{st['calls']} UNet calls x {fmt(st['per_call_s'])} ({st['samples']} clip-passes, {st['context_tokens']} "
        f"context token(s)) + {fmt(st['other_s'])} other; ours {fmt(ours['total_s'])} = {ours['calls']} UNet calls x "
        f"{fmt(ours['per_call_s'])} ({ours['samples']} clip-passes: 3 guidance branches inside the guidance interval, "
        f"1 outside; {ours['context_tokens']} context tokens, adapters) + {fmt(ours['other_s'])} other (text/vision "
        f"encoders, DQFormer, VAE). Per clip-pass ours costs "
        f"{(ours['seconds'] / ours['samples']) / (st['seconds'] / st['samples']):.2f}x the stock one.",
        "Top operators by self CPU time (torch.profiler, one request): stock " + _ops(st["top_ops"])
        + "; ours " + _ops(ours["top_ops"]) + ".",
    ]
    if not results["machine"]["device"].startswith("cuda"):
        lines.append("On a GPU, TensorRT FP16 engines replace ONNX Runtime in sections 1-2 and 6 and small batches stop "
                     "being compute-bound; measure there with `python -m bench --device cuda` (GPU path untested here).")
    return lines


def _ops(ops: list[dict]) -> str:
    return ", ".join(f"{o['op']} {o['share']:.0%}" for o in ops)


def jsonable(value: Any) -> Any:
    if isinstance(value, (Timing, Growth)):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def plot(results: dict, path: Path) -> None:
    """Six panels: the three growth series on log-log axes, and the three comparisons as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    sc = results["scaling"]
    for ax, axis, label in zip(axes[0], ("frames", "side", "steps"), ("frames", "side length (px)", "sampling steps")):
        pts = sc[axis]["points"]
        xs, ys = [p["x"] for p in pts], [p["timing"].median for p in pts]
        lo = [p["timing"].median - p["timing"].min for p in pts]
        hi = [p["timing"].max - p["timing"].median for p in pts]
        g = sc[axis]["growth"]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label="median (min-max)")
        ax.plot(xs, [ys[0] * (x / xs[0]) ** g.exponent for x in xs], "--", label=f"~x^{g.exponent:.2f}")
        ax.set(xscale="log", yscale="log", xlabel=label, ylabel="seconds per request", title=f"latency vs {label}")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend()
    d = results["diffusers"]
    names = [f"stock\n{d['equal_steps']} st"] + [f"node\n{SHORT.get(r['backend'], r['backend'])}\n{r['steps']} st" for r in d["node"].values()]
    _bars(axes[1][0], names, [d["stock"]] + [r["timing"] for r in d["node"].values()], "vs diffusers SVD pipeline")
    b = results["backends"]
    e = b["engine"]
    short = SHORT.get(e, e)
    _bars(axes[1][1], ["step\ntorch", f"step\n{short}", "request\ntorch", f"request\n{short}"],
          [b["step"]["torch"], b["step"][e], b["request"]["torch"], b["request"][e]], "backends", log=True)
    bt = results["batching"]
    x = range(len(bt))
    axes[1][2].bar([i - 0.2 for i in x], [r["one_request"].median for r in bt], 0.4, label="1 request x M")
    axes[1][2].bar([i + 0.2 for i in x], [r["separate"].median for r in bt], 0.4, label="M requests")
    axes[1][2].set(xticks=list(x), xticklabels=[f"M={r['m']}" for r in bt], ylabel="seconds", title="batching")
    axes[1][2].legend()
    m = results["machine"]
    fig.suptitle(f"{m['cpu']}, {m['cores']} cores, torch / ONNX Runtime threads {m['torch_threads']} / "
                 f"{m['ort_intra_op_threads']}, model {results['model']['spec']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(ax, names: list[str], timings: list[Timing], title: str, log: bool = False) -> None:
    med = [t.median for t in timings]
    ax.bar(range(len(med)), med, yerr=[[m - t.min for m, t in zip(med, timings)], [t.max - m for m, t in zip(med, timings)]],
           capsize=3)
    ax.set(xticks=list(range(len(med))), title=title, ylabel="seconds", yscale="log" if log else "linear")
    ax.set_xticklabels(names, fontsize=8)


def write(results: dict, out: Path) -> dict[str, Path]:
    """bench.json, bench.png and bench.md in `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "png": out / "bench.png", "markdown": out / "bench.md"}
    paths["json"].write_text(json.dumps(jsonable(results), indent=2))
    paths["markdown"].write_text("\n\n".join([machine_line(results), markdown(results), *notes(results)]) + "\n")
    plot(results, paths["png"])
    return paths
