"""The `foresight` command: one subcommand per job; each parses its own arguments here only."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("foresight")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="'tiny' (embedded), 'tiny-random' or a model folder")


def cmd_predict(args: argparse.Namespace) -> None:
    from foresight.imaging import contact_sheet, read_image, write_gif, write_png
    from foresight.pipeline import load_pipeline

    pipe = load_pipeline(args.model)
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
        seed=args.seed,
        progress=True,
    )
    elapsed = time.perf_counter() - start
    from foresight.imaging import fit_frames

    shown = fit_frames(context, pipe.height, pipe.width)
    rows = [np.concatenate([shown, v]) for v in video]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_gif(out, np.concatenate(rows, axis=2), fps=4, scale=max(1, 256 // pipe.height))
    write_png(out.with_suffix(".png"), contact_sheet(rows))
    print(f"predicted {video.shape[0]} x {video.shape[1]} frames at {pipe.height}x{pipe.width} in {elapsed:.2f}s")
    print(f"wrote {out} and {out.with_suffix('.png')}")


def cmd_params(args: argparse.Namespace) -> None:
    from foresight.params import count_real_config

    counts = count_real_config(num_frames=args.num_frames)
    if args.json:
        print(json.dumps(counts, indent=2))
        return
    unet = counts["unet"]
    for name, value in counts.items():
        share = "" if name == "unet" or not isinstance(value, int) else f"  ({100 * value / unet:.2f}% of the UNet)"
        print(f"{name:>22}: {value:>14,}{share}" if isinstance(value, int) else f"{name:>22}: {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foresight", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="predict future frames for context frames + instruction(s)")
    add_model_arguments(p)
    p.add_argument("--frames", nargs="+", required=True, help="K context frames (PNG/JPEG), oldest first")
    p.add_argument("--instruction", action="append", required=True, help="repeat for several hypotheses")
    p.add_argument("--out", default="prediction.gif", help="GIF path; a PNG contact sheet goes beside it")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance-frame", type=float, default=None)
    p.add_argument("--guidance-text", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("params", help="parameter counts of AID on the real SVD config (no weights needed)")
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_params)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.func(args)


if __name__ == "__main__":
    main()
