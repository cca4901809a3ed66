"""The `foresight` command: one subcommand per job; each parses its own arguments here only."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from foresight.config import SOLVER_NAMES
from foresight.dtypes import DTYPE_NAMES
from sim_bridge.common.logs import setup_logging
from sim_bridge.common.rerun_log import episode_path, recording_to, rrd_path

logger = logging.getLogger("foresight")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="'tiny' (embedded), 'tiny-turbo' (its 4-step distilled student), 'tiny-random' or a model folder")


def add_rerun_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--rerun", type=rrd_path, default=None, metavar="FILE.rrd",
                        help=f"also write a Rerun recording of {what} (needs rerun-sdk)")


def add_solver_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--solver", choices=SOLVER_NAMES, default=None,
                        help="ODE solver (default: the model's); heun calls the UNet 2 * steps - 1 times")


def cmd_predict(args: argparse.Namespace) -> None:
    from foresight.dtypes import dtype_name
    from foresight.pipeline import load_pipeline
    from sim_bridge.common.imaging import contact_sheet, fit_frames, read_image, write_gif, write_png

    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, backend=args.backend, engines=args.engines,
                         compile=args.compile)
    info = pipe.info()
    compiled = ", compiled" if info["backend"]["details"].get("compiled") else ""
    print(f"backend: {info['backend']['name']} ({info['backend']['reason']}{compiled}), "
          f"{dtype_name(pipe.model.dtype)} on {info['device']}")
    context = np.stack([read_image(p) for p in args.frames])
    if len({f.shape for f in context}) > 1:
        raise SystemExit("all --frames must have the same size")
    start = time.perf_counter()
    video = pipe.predict(
        context,
        args.instruction,
        steps=args.steps,
        guidance_frame=args.guidance_frame,
        guidance_text=args.guidance_text,
        solver=args.solver,
        seed=args.seed,
        progress=True,
    )
    elapsed = time.perf_counter() - start
    shown = fit_frames(context, pipe.height, pipe.width)
    rows = [np.concatenate([shown, v]) for v in video]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_gif(out, np.concatenate(rows, axis=2), fps=4, scale=max(1, 256 // pipe.height))
    write_png(out.with_suffix(".png"), contact_sheet(rows))
    print(f"predicted {video.shape[0]} x {video.shape[1]} frames at {pipe.height}x{pipe.width} in {elapsed:.2f}s")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    if args.rerun:
        record_prediction(args.rerun, shown, args.instruction, video, elapsed)
        print(f"wrote {args.rerun}")


def record_prediction(path: Path, context: np.ndarray, instructions: list[str], video: np.ndarray,
                      latency_s: float) -> None:
    """One request as episode "predict" of a Rerun recording: the K context frames at frames 0..K-1, each
    instruction's predicted frames after them as predicted/<instruction>, the latency at step 0."""
    with recording_to(path, "foresight-predict") as recording:
        entity = episode_path("predict")
        recording.text([*entity, "instruction"], "\n".join(instructions))
        recording.frames([*entity, "context"], context, 0)
        for text, predicted in zip(instructions, video):
            recording.frames([*entity, "predicted", text], predicted, len(context))
        recording.scalars([*entity, "metrics"], 0, {"latency_s": latency_s})


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def cmd_params(args: argparse.Namespace) -> None:
    from foresight.dtypes import torch_dtype
    from foresight.params import (
        DECODE_CHUNK_SIZE,
        architecture,
        count_real_config,
        request_memory,
        training_memory,
    )

    if args.memory or args.train:
        arch = architecture(args.model, args.height, args.width, args.num_frames)
        distill = False
        if args.config:  # a training job's own AID config (size, LoRA) on the real architecture
            from dataclasses import replace

            from foresight.training.config import load_jobs

            job = load_jobs(args.config)[-1]
            if args.train and job.stage not in ("aid", "distill"):
                raise SystemExit(f"--train models the aid and distill stages' steps; {args.config} is a "
                                 f"{job.stage} stage (use --memory for its model's requests)")
            if job.model.aid.dqformer is not None and job.model.aid.dqformer.width != 1024:
                raise SystemExit(f"{args.config} is not a config for the real SVD (its DQFormer width "
                                 f"{job.model.aid.dqformer.width} != SVD's cross-attention width 1024)")
            distill = job.stage == "distill"
            arch = architecture("svd", args.height or job.model.aid.height, args.width or job.model.aid.width,
                                args.num_frames or job.model.aid.num_frames)
            arch = replace(arch, name=args.config, config=replace(job.model.aid, **{
                k: getattr(arch.config, k) for k in ("height", "width", "num_frames")}))
        cfg = arch.config
        size = f"{cfg.height}x{cfg.width}x{cfg.num_frames}"
        batches = [int(b) for b in args.batch.split(",")] if args.memory else []
        chunk = DECODE_CHUNK_SIZE if args.decode_chunk is None else args.decode_chunk or None
        reports = [request_memory(arch, b, torch_dtype(args.dtype), chunk) for b in batches]
        rows = [training_memory(arch, b, ckpt, distill) for ckpt in (False, True) for b in (1, 2)] if args.train else []
        if args.json:
            print(json.dumps({"memory": reports, "train": rows}, indent=2))
            return
        if reports:
            weights = reports[0]["weights_bytes"]
            print(f"one request, {arch.name} at {size}, {args.dtype}, 3 guidance branches per instruction "
                  f"(GiB; fake tensors, no weights read):")
            print("weights: " + ", ".join(f"{k} {_gib(v)}" for k, v in weights.items())
                  + f"; total {_gib(reports[0]['weights_total_bytes'])}")
            print("| batch (M) | text | encode | UNet call | VAE decode | request peak |")
            print("| --- | --- | --- | --- | --- | --- |")
            for r in reports:
                act = r["activation_peak_bytes"]
                print(f"| {r['batch']} | {_gib(act['text'])} | {_gib(act['encode'])} | {_gib(act['unet'])} | "
                      f"{_gib(act['decode'])} ({r['decode_chunk']} frames/call) | {_gib(r['request_peak_bytes'])} |")
        if rows:
            what = ("a distill step (teacher's 3 branches and the EMA target without gradients, then the student; "
                    "teacher and target copies of the trained weights)" if distill else "one training step")
            print(f"{what}, {arch.name} at {size}: bf16 frozen backbone under autocast, fp32 adapters "
                  f"+ DQFormer{' + UNet LoRA' if distill else ''} with AdamW (GiB):")
            copies = " teacher + target copies |" if distill else ""
            print(f"| gradient checkpointing | batch | peak | weights | AdamW states |{copies} step (activations, grads) |")
            print("| --- " * (7 if distill else 6) + "|")
            for r in rows:
                held = f" {_gib(r['teacher_and_target_bytes'])} |" if distill else ""
                print(f"| {'yes' if r['gradient_checkpointing'] else 'no'} | {r['batch']} | {_gib(r['peak_bytes'])} | "
                      f"{_gib(r['weights_bytes'])} | {_gib(r['optimizer_state_bytes'])} |{held} "
                      f"{_gib(r['step_peak_bytes'])} |")
        return
    counts = count_real_config(num_frames=args.num_frames or 16)
    if args.json:
        print(json.dumps(counts, indent=2))
        return
    unet = counts["unet"]
    for name, value in counts.items():
        share = "" if name == "unet" or not isinstance(value, int) else f"  ({100 * value / unet:.2f}% of the UNet)"
        print(f"{name:>22}: {value:>14,}{share}" if isinstance(value, int) else f"{name:>22}: {value}")


def cmd_train(args: argparse.Namespace) -> None:
    from foresight.training.config import load_jobs
    from foresight.training.trainer import train

    jobs = load_jobs(args.config, tuple(args.set), args.out)
    start = time.perf_counter()
    for job in jobs:
        result = train(job)
        print(f"{job.stage}: wrote {result}")
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min this run; rerun the same command to resume")


def cmd_states(args: argparse.Namespace) -> None:
    from foresight.states import VLMDecomposer, build_states_cache, make_decomposer
    from sim_bridge.data.readers import read_episodes

    vlm = VLMDecomposer(args.vlm, args.num_states, device=args.device)
    fallback = None if args.unparsed == "fail" else make_decomposer(args.unparsed, args.num_states)
    pairs = ((ep.instruction, ep.frames[0]) for _, ep in read_episodes(args.episodes, args.camera))
    added, fell_back = build_states_cache(pairs, vlm, args.out, fallback)
    print(f"added {added} instructions to {args.out}"
          + (f" ({fell_back} answered without numbered states: {args.unparsed} states used, see the log)"
             if fell_back else ""))


def cmd_eval(args: argparse.Namespace) -> None:
    from foresight.evaluation import (
        RECORDED_VARIANTS,
        REWORD_VARIANTS,
        VARIANTS,
        format_kinds,
        format_table,
        run_eval,
        run_eval_recorded,
        write_report,
    )

    sampler = {"steps": args.steps, "i3d": args.i3d, "guidance_interval": None if args.guide_every_step else "config",
               "guidance_frame": args.guidance_frame, "guidance_text": args.guidance_text, "solver": args.solver,
               "figure": args.figure, "device": args.device, "dtype": args.dtype}
    with recording_to(args.rerun, "foresight-eval") as recording:
        if args.episodes_dir:
            variants = tuple(args.variants.split(",")) if args.variants else RECORDED_VARIANTS
            report = run_eval_recorded(args.model, args.episodes_dir, args.episodes, args.seed, variants,
                                       stride=args.stride, per_episode=args.clips_per_episode, recording=recording,
                                       **sampler)
            print(f"{report['clips']} clips from {report['episodes_used']} of {report['episodes_found']} episodes "
                  f"(skipped: {report['skipped']})")
        else:
            variants = tuple(args.variants.split(",")) if args.variants else VARIANTS
            variants += REWORD_VARIANTS if args.rewording else ()
            report = run_eval(args.model, args.episodes, args.seed, variants, recording=recording, **sampler)
    print(format_table(report))
    kinds = format_kinds(report)
    if kinds:
        print(kinds)
    print(report["distance_note"])
    if args.json:
        write_report(report, args.json)
        print(f"wrote {args.json}")
    if args.figure:
        print(f"wrote {args.figure}")
    if args.rerun:
        print(f"wrote {args.rerun}")


def cmd_demo(args: argparse.Namespace) -> None:
    """A node in a child process on a free localhost port, exactly as a robot meets it (its log
    in <out>/node.log), and the simulator bridge's demo as its client."""
    from foresight.node.process import running_node
    from sim_bridge.apps.demo import run_demo

    out = Path(args.out)
    with running_node(args.model, out / "node.log") as endpoint:
        run_demo(endpoint, out, episodes=args.episodes, planner_seeds=args.goals, steps=args.steps,
                 candidates=args.candidates, budget=args.budget)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foresight", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the main job: node + simulated episodes + replay + planner, end to end")
    add_model_arguments(p)
    p.add_argument("--out", default="demo_out", help="where metrics and media go")
    p.add_argument("--episodes", type=int, default=3, help="tabletop episodes to replay")
    p.add_argument("--goals", type=int, default=3, help="planner goals")
    p.add_argument("--candidates", type=int, default=4, help="instructions the planner tries per request")
    p.add_argument("--budget", type=int, default=2, help="planner steps per goal")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("predict", help="predict future frames for context frames + instruction(s)")
    add_model_arguments(p)
    p.add_argument("--frames", nargs="+", required=True, help="K context frames (PNG/JPEG), oldest first")
    p.add_argument("--instruction", action="append", required=True, help="repeat for several hypotheses")
    p.add_argument("--out", default="prediction.gif", help="GIF path; a PNG contact sheet goes beside it")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance-frame", type=float, default=None)
    p.add_argument("--guidance-text", type=float, default=None)
    add_solver_argument(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=("auto", "tensorrt", "onnxruntime", "torch"), default="auto",
                   help="UNet runtime; auto = best usable of tensorrt > onnxruntime > torch")
    p.add_argument("--engines", default=None, help="engine folder from export/build_engines.py (default: none, PyTorch)")
    p.add_argument("--device", default="cpu", help="torch device of the model, e.g. cuda or cuda:1")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32",
                   help="what the PyTorch parts compute in (the sampler's state stays fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (PyTorch backend; first request compiles)")
    add_rerun_argument(p, "the context and each instruction's predicted frames")
    p.set_defaults(func=cmd_predict)

    from foresight.node.cli import add_serve_arguments, run_serve

    p = sub.add_parser("serve", help="run the ZeroMQ foresight node")
    add_serve_arguments(p)
    p.set_defaults(func=run_serve)

    from foresight.training.config import preset_names

    p = sub.add_parser("train", help="train a stage or a chain of stages from a config file or preset (resumable)")
    p.add_argument("config", help=f"a TOML/JSON job file or a preset: {', '.join(preset_names())}")
    p.add_argument("--out", default=None, help="run folder (default: the config's); rerun to resume")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optim.steps=30 --set model.svd=/models/svd")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("states", help="decompose every instruction of a dataset once with a local VLM (JSON cache)")
    p.add_argument("episodes", help="episode folder (our format, BridgeData raw, ...)")
    p.add_argument("--vlm", required=True, help="local image-text-to-text model folder (LLaVA, Qwen-VL, ...)")
    p.add_argument("--out", required=True, help="JSON cache to write or extend; give it as model.states")
    p.add_argument("--num-states", type=int, default=4)
    p.add_argument("--camera", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--unparsed", choices=("template", "none", "fail"), default="template",
                   help="an answer without numbered states: take template (or empty) states for that "
                        "instruction, with a warning, or stop")
    p.set_defaults(func=cmd_states)

    p = sub.add_parser("eval", help="instruction following, PSNR/SSIM and video distances on held-out simulator "
                                     "episodes, or PSNR/SSIM/FVD/KVD on recorded ones")
    add_model_arguments(p)
    p.add_argument("--episodes", type=int, default=100,
                   help="simulator episodes, or how many recorded episodes to take evenly from --episodes-dir")
    p.add_argument("--episodes-dir", default=None,
                   help="recorded episodes (our format or BridgeData V2 raw) instead of the simulator")
    p.add_argument("--stride", type=int, default=1, help="recorded clips: take every stride-th frame")
    p.add_argument("--clips-per-episode", type=int, default=1, help="recorded clips: windows spread evenly per episode")
    p.add_argument("--seed", type=int, default=0,
                   help="offset into the evaluation seeds (disjoint from training) and the sampling seeds")
    p.add_argument("--variants", default=None, help="comma-separated subset of: aid,aid-paraphrase,base,no-states,"
                   "no-adapters,no-de (recorded episodes: all but aid-paraphrase), reword-colour, reword-noun, "
                   "reword-verb, reword-relation, reword-direction, reword-all")
    p.add_argument("--rewording", action="store_true",
                   help="add the rewording report: each kind of word (colour, noun, verb, relation, direction, all) "
                        "swapped for held-out words of the same meaning")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guide-every-step", action="store_true",
                   help="apply guidance at every step, not only in the model's guidance interval")
    p.add_argument("--guidance-frame", type=float, default=None, help="s_V (default: the model's)")
    p.add_argument("--guidance-text", type=float, default=None, help="s_T (default: the model's)")
    add_solver_argument(p)
    p.add_argument("--device", default="cpu", help="torch device of the model, e.g. cuda")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32",
                   help="what the model computes in (bf16 halves a real SVD's memory; the sampler stays fp32)")
    p.add_argument("--i3d", default=None, help="local TorchScript I3D weights for FVD and KVD (never downloaded)")
    p.add_argument("--json", default=None, help="write the full report here")
    p.add_argument("--figure", default=None,
                   help="PNG of the first variant's predictions on the first 6 episodes, beside the recorded final frames")
    add_rerun_argument(p, "every episode's context, recorded truth and each variant's prediction and scores")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("params", help="parameter counts, request and training memory of AID (no weights needed)")
    p.add_argument("--memory", action="store_true", help="weights and peak activation memory of one predict request")
    p.add_argument("--train", action="store_true",
                   help="memory of one training step, batch 1 and 2, with and without gradient checkpointing")
    p.add_argument("--model", default="svd",
                   help="'svd' (the real config), 'tiny' or a model folder (--memory/--train; only configs are read)")
    p.add_argument("--config", default=None,
                   help="--train: a training config or preset (e.g. svd-bridge-turbo): its AID config and stage on "
                        "the real SVD architecture")
    p.add_argument("--height", type=int, default=None, help="default: the model's (svd: 256)")
    p.add_argument("--width", type=int, default=None, help="default: the model's (svd: 256)")
    p.add_argument("--num-frames", type=int, default=None, help="N (default: the model's; svd: 16)")
    p.add_argument("--batch", default="1,4,16", help="instructions per request (M), comma-separated (--memory)")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="bf16", help="weights and activations (--memory)")
    p.add_argument("--decode-chunk", type=int, default=None,
                   help="frames per VAE decode call in whole clips, as the pipeline's decode_chunk_size "
                        "(--memory; default: the pipeline's; 0: all M clips at once)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_params)
    return parser


# what a user's input causes: a missing model folder, file or preset, a bad value or config key
USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError)


def main(argv: list[str] | None = None) -> None:
    """Run one command. A user's error is one line on stderr and exit status 2, as argparse's own;
    with -v its traceback instead."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        args.func(args)
    except USER_ERRORS as exc:
        if args.verbose:
            raise
        print(f"foresight {args.command}: error: {exc} (-v shows where)", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
