"""Export AID's UNet, VAE decoder, VAE encoder and DQFormer to ONNX, check them, build TensorRT engines where possible.

    python -m foresight.export.build_engines --model tiny-random --out engines/tiny-random
    python -m foresight.export.build_engines --model /models/aid --out /models/aid/engines --precision fp16 --max-batch 4

Stages: load the model -> export ONNX graphs (dynamic batch and frames, traced in fp32) -> the
PyTorch model's outputs on fresh random inputs, kept on the host, then the model is freed ->
convert the fp16 graphs (--precision fp16: the UNet and VAE decoder) -> check each graph in
its own ONNX Runtime session against them, one at a time -> build TensorRT engines (strongly typed,
one optimization profile for batch 1..3*max_batch: the three guidance branches are batched) and
check each the same way -> write manifest.json. Each stage logs its wall time and the peak RSS.
At full size (a 1.5 B-parameter UNet) the fp32 model, ONNX Runtime's copy of the UNet graph and
the check's activations never sit in memory together. Without TensorRT or a CUDA GPU the build
stage is skipped with the reason, and the ONNX graphs are the engines. Only graphs that passed
their check are marked usable in the manifest; the loader (foresight.engines.select) uses nothing else.

--attention picks the UNet's attention form (export/onnx_export.py): standard ONNX operators,
which TensorRT parses, or ONNX Runtime's fused MultiHeadAttention, faster on ONNX Runtime and
unknown to TensorRT. The default takes the fused form wherever no TensorRT engine is built.

With --precision fp16 the UNet and VAE-decoder graphs are fp16; the DQFormer graph stays fp32:
it runs once per request, and the TorchScript exporter writes a type-inconsistent graph for its
boolean-masked attention in fp16 (LayerNormalization bound to float and float16).

The VAE decoder is exported because it decodes every predicted frame once per request: on the
tiny model on a CPU that is about a tenth of a request, and ONNX Runtime runs it in half the time
of PyTorch. The VAE encoder (K context frames per request, kept fp32) is exported as well: beside
ONNX Runtime's workers PyTorch encoded the tiny model's context frame in about 6 ms, ONNX Runtime
in about 1.5. The vision encoder (one frame) and the text encoder (cached per instruction) stay
in PyTorch.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import logging
import resource
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from foresight.engines import onnxruntime_backend, tensorrt_backend
from foresight.engines.manifest import (
    FORMAT_VERSION,
    file_sha256,
    gpu_name,
    graph_modules,
    library_versions,
    weights_sha256,
    write_manifest,
)
from foresight.engines.onnxruntime_backend import OnnxRuntimeBackend
from foresight.engines.tensorrt_backend import TensorRTBackend
from foresight.export.onnx_export import (
    ATTENTION_FORMS,
    DQFormerGraph,
    GraphShapes,
    export_graph,
    graph_io,
    graph_shapes,
    to_float16,
)
from foresight.export.tensorrt_build import Profile, build_engine
from foresight.export.validate import Case, Runner, check, reference_cases
from torch import nn

from sim_bridge.common.logs import setup_logging

logger = logging.getLogger("export")

TIMING_CACHE = "timing.cache"


@dataclass(frozen=True)
class BuildConfig:
    """What to build. None sizes default to the model config; frames is the most frames per call."""

    model: str
    out: Path
    adapters: Path | None = None
    precision: str = "fp32"
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    max_batch: int = 1
    opset: int = 17
    seed: int | None = None
    attention: str = "auto"

    def __post_init__(self) -> None:
        if self.attention not in ("auto", *ATTENTION_FORMS):
            raise ValueError(f"attention must be auto or one of {ATTENTION_FORMS}, got {self.attention!r}")
        if self.precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be fp32 or fp16, got {self.precision!r}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch (hypotheses per request) must be >= 1, got {self.max_batch}")
        if not 9 <= self.opset <= 20:
            raise ValueError(f"opset must be in [9, 20] (the TorchScript exporter), got {self.opset}")


def _load(config: BuildConfig, device: torch.device):
    from foresight.model_dir import load_model

    model = load_model(config.model).model
    if config.adapters is not None:
        model.load_aid_weights(config.adapters)
    return model.to(device).eval()


def _profiles(shapes: GraphShapes, frames: tuple[int, int], decoder_frames: tuple[int, int],
              max_batch: int) -> dict[str, Profile]:
    """min / opt / max per input. opt = one hypothesis (3 branches), full length: the common request."""
    s = shapes
    batches, fr = (1, 3, 3 * max_batch), (frames[0], frames[1], frames[1])
    dec = (decoder_frames[0], decoder_frames[1], decoder_frames[1])

    def per(fn):
        return tuple(fn(b, f) for b, f in zip(batches, fr))

    return {
        "unet": {
            "sample": per(lambda b, f: (b, f, s.in_channels, s.latent_height, s.latent_width)),
            "timestep": per(lambda b, f: (b,)),
            "encoder_hidden_states": per(lambda b, f: (b * f, s.context_tokens, s.cross_dim)),
            "added_time_ids": per(lambda b, f: (b, 3)),
        },
        "vae_decoder": {  # one clip per hypothesis: decoding comes after guidance
            "latents": tuple((b, f, s.latent_channels, s.latent_height, s.latent_width)
                             for b, f in zip((1, 1, max_batch), dec)),
        },
        "vae_encoder": {  # the K context frames of each hypothesis, once for all guidance branches
            "frames": tuple((b, s.context_frames, 3, s.height, s.width) for b in (1, 1, max_batch)),
        },
        "dqformer": {
            "t1": per(lambda b, f: (b, s.text_tokens, s.text_dim)),
            "t1_mask": per(lambda b, f: (b, s.text_tokens)),
            "t2": per(lambda b, f: (b, s.state_tokens, s.text_dim)),
            "t2_mask": per(lambda b, f: (b, s.state_tokens)),
            "v": per(lambda b, f: (b, s.vision_tokens, s.vision_dim)),
        },
    }


def reference_runners(reference: nn.Module) -> dict[str, Runner]:
    """graph -> callable(inputs dict) running that part of the PyTorch model."""
    dq = DQFormerGraph(reference.dqformer) if reference.dqformer is not None else None
    return {"unet": lambda x: reference.unet(**x), "vae_decoder": lambda x: reference.vae_decode(**x),
            "vae_encoder": lambda x: reference.vae_encode(**x), "dqformer": lambda x: dq(**x)}


def backend_runner(backend, graph: str) -> Runner:
    """A runtime backend's callable for one graph."""
    return {"unet": lambda x: backend.unet(**x), "vae_decoder": lambda x: backend.vae_decoder(**x),
            "vae_encoder": lambda x: backend.vae_encoder(**x),
            "dqformer": lambda x: backend.dqformer(**x)}[graph]


def check_shapes(config: BuildConfig, plan: Plan, num_frames: int) -> dict[str, list[tuple[int, int]]]:
    """(batch, frames) per checked call: the fewest and most frames, one call and a batch. The UNet
    is proven at batch 2 on a CPU (dynamic batch shown without loading the machine); on a GPU also
    at the top of the engines' profile, 3 x max_batch."""
    fewest, most = plan.frames
    big = 3 * config.max_batch
    unet = [(1, fewest), (2, most)] + ([(big, most)] if plan.device.type == "cuda" and big > 2 else [])
    context = plan.shapes.context_frames
    return {"unet": unet, "vae_decoder": [(1, plan.decoder_frames[0]), (config.max_batch, plan.decoder_frames[1])],
            "vae_encoder": [(1, context), (config.max_batch, context)],
            "dqformer": [(1, num_frames), (big, num_frames)]}


def _report(graph: str, kind: str, check: dict) -> None:
    verdict = "ok" if check["passed"] else f"FAILED (tolerance {check['tolerance_rel']:.0e})"
    print(
        f"{graph:>11} {kind:>8} vs {check['reference']:<11} max abs {check['max_abs']:.3e}  "
        f"max rel {check['max_rel']:.3e}  {verdict}"
    )


@dataclass(frozen=True)
class Plan:
    """What every stage builds, resolved from a BuildConfig and the loaded model.

    frames: (fewest, most) frames per call; decoder_frames: the VAE-decoder graph's, where a frame
    decoder is given only the predicted frames (`AIDModel.decode_latents`' skip) and the temporal
    decoder whole clips; precisions: per graph (the DQFormer stays fp32);
    attention: the UNet's resolved form; trt_missing: why no TensorRT engine can be built, or None.
    """

    device: torch.device
    seed: int
    height: int
    width: int
    frames: tuple[int, int]
    decoder_frames: tuple[int, int]
    shapes: GraphShapes
    precisions: dict[str, str]
    attention: str
    trt_missing: str | None


def plan_build(config: BuildConfig, reference: nn.Module, device: torch.device) -> Plan:
    """Check the requested sizes against the model and resolve the defaults."""
    cfg = reference.config
    height, width = config.height or cfg.height, config.width or cfg.width
    frames_max = config.frames or cfg.num_frames
    if not cfg.context_frames < frames_max <= cfg.num_frames:
        raise ValueError(f"--frames must be in ({cfg.context_frames}, {cfg.num_frames}], got {frames_max}")
    if height % 8 or width % 8:
        raise ValueError(f"--height and --width must be multiples of 8, got {height}x{width}")
    trt_missing = tensorrt_backend.missing_reason()
    attention = config.attention
    if attention == "auto":
        attention = "onnxruntime" if trt_missing else "onnx"
    return Plan(
        device=device,
        seed=config.seed if config.seed is not None else secrets.randbits(31),
        height=height,
        width=width,
        frames=(cfg.context_frames + 1, frames_max),
        decoder_frames=(1 if reference.decoder is not None else cfg.context_frames + 1, frames_max),
        shapes=graph_shapes(reference, height, width),
        precisions={"unet": config.precision, "vae_decoder": config.precision, "vae_encoder": "fp32", "dqformer": "fp32"},
        attention=attention,
        trt_missing=trt_missing,
    )


def export_onnx(config: BuildConfig, plan: Plan, reference: nn.Module) -> dict[str, list[Path]]:
    """Stage 2: every graph to ONNX, traced from the fp32 reference (`to_fp16` converts the fp16
    ones once the model is freed, so no half-precision model is ever traced)."""
    files = {}
    for graph in graph_modules(reference):
        path = Path(config.out) / f"{graph}.onnx"
        # traced at the fewest frames: frames are a dynamic axis, the check runs both ends, and the
        # trace's forward pass costs 8x less at 16 frames
        frames = plan.shapes.context_frames if graph == "vae_encoder" else plan.frames[0]
        files[graph] = export_graph(graph, reference, plan.shapes, frames, path, config.opset, plan.attention)
        logger.info("  %s -> %s", graph, ", ".join(p.name for p in files[graph]))
    return files


def references(config: BuildConfig, plan: Plan, reference: nn.Module) -> tuple[dict[str, list[Case]], dict[str, str]]:
    """Stage 3: the PyTorch model's outputs for every checked call, kept on the host, and the
    weights' sha256 per graph: all that later stages need of the model, which can then be freed."""
    cases = check_shapes(config, plan, reference.config.num_frames)
    run = reference_runners(reference)
    outputs, sources = {}, {}
    for graph, module in graph_modules(reference).items():
        outputs[graph] = reference_cases(run[graph], graph, plan.shapes, cases[graph], plan.device, plan.seed)
        sources[graph] = weights_sha256(module, plan.precisions[graph])
    return outputs, sources


def to_fp16(plan: Plan, files: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """Stage 4: the graphs whose precision is fp16, converted in place (`to_float16`), after the
    model is freed: at full size the conversion holds the fp32 UNet graph (6 GB) and its fp16
    copy, which beside the model and the reference pass ran a 24 GiB machine out of memory."""
    converted = dict(files)
    for graph, precision in plan.precisions.items():
        if graph in files and precision == "fp16":
            converted[graph] = to_float16(files[graph][0])
            logger.info("  %s -> %s (fp16)", graph, ", ".join(p.name for p in converted[graph]))
    return converted


def check_onnx(config: BuildConfig, plan: Plan, num_frames: int, onnx_files: dict[str, list[Path]],
               outputs: dict[str, list[Case]], sources: dict[str, str]) -> dict[str, dict]:
    """Stage 5: each graph in its own ONNX Runtime session against the PyTorch outputs, one session
    at a time -> manifest entries per graph."""
    missing = onnxruntime_backend.missing_reason()
    if missing:
        raise RuntimeError(f"cannot check the ONNX graphs: {missing}")
    import onnxruntime

    ort_device = plan.device if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else torch.device("cpu")
    graphs: dict[str, dict] = {}
    for graph, cases in outputs.items():
        precision = plan.precisions[graph]
        backend = OnnxRuntimeBackend({graph: onnx_files[graph][0]}, num_frames, ort_device)
        result = check(backend_runner(backend, graph), cases, graph, precision, ort_device, plan.seed, "pytorch")
        del backend
        gc.collect()
        _report(graph, "onnx", result)
        graphs[graph] = {
            "precision": precision,
            "source_sha256": sources[graph],
            **graph_io(onnx_files[graph][0]),
            "onnx": {
                "files": {p.name: file_sha256(p) for p in onnx_files[graph]},
                "opset": config.opset,
                "attention": plan.attention if graph == "unet" else "onnx",
                "check": result,
                "usable": result["passed"],
            },
        }
    return graphs


def tensorrt_skip_reason(plan: Plan, graphs: dict[str, dict]) -> str | None:
    """Why stage 6 builds no engines, or None."""
    if plan.trt_missing:
        return plan.trt_missing
    if plan.attention == "onnxruntime":
        return "the UNet graph uses ONNX Runtime's fused attention (--attention onnxruntime), which TensorRT does not parse"
    if not all(g["onnx"]["usable"] for g in graphs.values()):
        return "an ONNX graph failed its check, so no engine is built from it"
    return None


def build_tensorrt(config: BuildConfig, plan: Plan, num_frames: int, onnx_files: dict[str, list[Path]],
                   graphs: dict[str, dict], outputs: dict[str, list[Case]]) -> None:
    """Stage 6 (GPU path: untested here): build each engine and check it against the PyTorch
    outputs, one engine loaded at a time; record both in `graphs`.

    num_frames: the model's N (the DQFormer engine's output frames).
    """
    out = Path(config.out)
    profiles = _profiles(plan.shapes, plan.frames, plan.decoder_frames, config.max_batch)
    for graph in graphs:
        engine = out / f"{graph}.plan"
        build_engine(onnx_files[graph][0], engine, profiles[graph], out / TIMING_CACHE)
        graphs[graph]["tensorrt"] = {
            "files": {engine.name: file_sha256(engine)},
            "profile": {n: [list(s) for s in p] for n, p in profiles[graph].items()},
        }
        backend = TensorRTBackend({graph: engine}, num_frames, plan.device)
        result = check(backend_runner(backend, graph), outputs[graph], graph, plan.precisions[graph], plan.device,
                       plan.seed, "pytorch")
        del backend
        _report(graph, "tensorrt", result)
        graphs[graph]["tensorrt"] |= {"check": result, "usable": result["passed"]}


def manifest_for(config: BuildConfig, plan: Plan, aid_config: dict, graphs: dict[str, dict],
                 skip: str | None) -> dict:
    """Stage 7's content: everything the loader checks before it uses a graph (foresight.engines.manifest)."""
    versions = library_versions()
    if skip is None:
        import tensorrt as trt

        versions["tensorrt"] = trt.__version__
    return {
        "format": FORMAT_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": config.model,
        "adapters": None if config.adapters is None else str(config.adapters),
        "aid_config": aid_config,
        "precision": config.precision,
        "io_dtypes": "per graph: float16 for every float input and output of an fp16 graph, float32 for fp32; masks bool",
        "shapes": {
            "height": plan.height,
            "width": plan.width,
            "frames": {"min": plan.frames[0], "max": plan.frames[1]},
            "decoder_frames": {"min": plan.decoder_frames[0], "max": plan.decoder_frames[1]},
            "batch": {"min": 1, "opt": 3, "max": 3 * config.max_batch},
            "max_hypotheses": config.max_batch,
            **asdict(plan.shapes),
        },
        "versions": versions,
        "gpu": gpu_name(),
        "tensorrt_skipped": skip,
        "build": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()} | {"seed": plan.seed},
        "graphs": graphs,
    }


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class _Stages:
    """Numbered stage lines, each closed by its wall time and the process's peak RSS so far."""

    def __init__(self, total: int) -> None:
        self.total, self.number, self.started = total, 0, None

    def next(self, what: str, *args) -> None:
        self.done()
        self.number += 1
        logger.info(f"[{self.number}/{self.total}] {what}", *args)
        self.started = time.perf_counter()

    def done(self) -> None:
        if self.started is not None:
            logger.info("      %.1f s, peak RSS %.2f GiB", time.perf_counter() - self.started, _peak_rss_gib())
            self.started = None


def build_engines(config: BuildConfig) -> dict:
    """Run every stage; returns the manifest it wrote to config.out."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(7)

    stages.next("loading %s on %s", config.model, device)
    reference = _load(config, device)
    plan = plan_build(config, reference, device)
    aid_config, num_frames = reference.config.to_dict(), reference.config.num_frames

    stages.next("exporting ONNX graphs (%s, %s attention) to %s", config.precision, plan.attention, out)
    onnx_files = export_onnx(config, plan, reference)

    stages.next("PyTorch reference outputs (seed %d); then the model is freed", plan.seed)
    outputs, sources = references(config, plan, reference)
    del reference
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    stages.next("converting graphs to fp16: %s", ", ".join(g for g, p in plan.precisions.items() if p == "fp16")
                or "none (an fp32 build)")
    onnx_files = to_fp16(plan, onnx_files)

    stages.next("checking ONNX graphs with ONNX Runtime against PyTorch, one session at a time")
    graphs = check_onnx(config, plan, num_frames, onnx_files, outputs, sources)

    stages.next("TensorRT engines")
    skip = tensorrt_skip_reason(plan, graphs)
    if skip is None:
        build_tensorrt(config, plan, num_frames, onnx_files, graphs, outputs)
        print("TensorRT engines built; the manifest marks each usable only if it passed its check")
    else:
        print(f"TensorRT skipped: {skip}. The ONNX graphs are the engines (ONNX Runtime backend).")

    stages.next("writing the manifest")
    manifest = manifest_for(config, plan, aid_config, graphs, skip)
    path = write_manifest(out, manifest)
    stages.done()
    print(f"wrote {path}")
    return manifest


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="'tiny', 'tiny-random' or a model folder")
    parser.add_argument("--adapters", type=Path, default=None, help="AID weights (adapters + DQFormer) to load on top")
    parser.add_argument("--out", type=Path, required=True, help="engine folder to write")
    parser.add_argument("--precision", choices=("fp16", "fp32"), default=None,
                        help="graph and engine precision (default fp16 with a CUDA GPU, fp32 without)")
    parser.add_argument("--frames", type=int, default=None, help="most frames per call (default: the model's N)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--max-batch", type=int, default=1, help="most hypotheses per request")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--seed", type=int, default=None, help="for the random check inputs (default: fresh)")
    parser.add_argument("--attention", choices=("auto", *ATTENTION_FORMS), default="auto",
                        help="the UNet's attention: standard ONNX operators (TensorRT) or ONNX Runtime's "
                             "fused MultiHeadAttention (default: fused unless TensorRT engines are built)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    precision = args.precision or ("fp16" if torch.cuda.is_available() else "fp32")
    config = BuildConfig(
        model=args.model, out=args.out, adapters=args.adapters, precision=precision, frames=args.frames,
        height=args.height, width=args.width, max_batch=args.max_batch, opset=args.opset, seed=args.seed,
        attention=args.attention,
    )
    return build_engines(config)


if __name__ == "__main__":
    main()
