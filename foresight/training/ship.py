"""Packaging a training run as the embedded model: fp16 weights in the package, a model card.

A maintainer's tool, run from a checkout (it writes into this package's `weights/`):
`python -m foresight.training.ship --run RUN --eval RUN/eval.json`. Users keep their own models
as model folders and pass them with `--model DIR`.

A run is a chain folder (`foresight train tiny --out RUN`: RUN/vae, RUN/base, RUN/aid, ...) or one
stage's folder (`foresight train tiny-aid-reword --out RUN`, `foresight train tiny-turbo --out
RUN`, `foresight train tiny-turbo-decoder --out RUN`). The shipped model is the run's last AID,
distill or decoder stage; its base is referenced where it
already is a shipped folder (`tiny-svd`), else copied to `<name>-svd`. `--name tiny-turbo` ships
a distilled run beside `tiny`, on the same base.

The card records what someone needs to reproduce and judge the model: every stage of the chain
that made it (command, seed, steps, commit, wall time; a continuation keeps the stages that made
its starting weights, from the shipped card or from the finished run it continued), the command
that replays the chain, and the evaluation.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from foresight.model_dir import EMBEDDED, EMBEDDED_DIR
from foresight.training.config import resolve_path

MAX_EMBEDDED_BYTES = 40 * 1024 * 1024  # every shipped folder together
REPLAY = "foresight train tiny --out runs/tiny"
REPLAYS = {
    "tiny": REPLAY,
    "tiny-turbo": f"{REPLAY} && foresight train tiny-turbo --out runs/tiny-turbo "
                  "--set model.init=runs/tiny/aid-words/model --set model.svd=runs/tiny/base/svd "
                  "&& foresight train tiny-turbo-decoder --out runs/tiny-turbo-decoder "
                  "--set model.init=runs/tiny-turbo/model",
}
DESCRIPTIONS = {
    "tiny": "AID on a small SVD-architecture model, trained on the tabletop simulator",
    "tiny-turbo": "the embedded tiny distilled into a one-branch student that samples in 4 consistency steps "
                  "and decodes frame by frame (a small decoder trained against the VAE's temporal decoder)",
}
SHIPPED_STAGES = ("aid", "distill", "decoder")


def halve_safetensors(folder: Path) -> None:
    """Rewrite every safetensors file under `folder` with float tensors in fp16 (loaders upcast)."""
    for path in folder.rglob("*.safetensors"):
        state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        save_file(state, str(path), metadata={"format": "pt"})


def stage_folders(run: Path) -> list[Path]:
    """The run's finished stages in the order they finished."""
    folders = [run] if (run / "config.json").is_file() else [p for p in run.iterdir() if (p / "config.json").is_file()]
    finished = [f for f in folders if (f / "stats.json").is_file()]
    if not finished:
        raise FileNotFoundError(f"{run} holds no finished training stage (no config.json + stats.json)")
    return sorted(finished, key=lambda f: (f / "stats.json").stat().st_mtime)


def chain_entry(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    stats = json.loads((folder / "stats.json").read_text())
    shown = folder.relative_to(Path.cwd()) if folder.is_absolute() and folder.is_relative_to(Path.cwd()) else folder
    return {"stage": config["stage"], "command": stats.get("command"), "folder": str(shown),
            "seed": config["seed"], "steps": stats["steps"],
            "batch": config["optim"]["batch"], "seconds": stats["seconds"], "commit": stats.get("commit", "unknown"),
            "init": config["model"].get("init", ""), "svd": config["model"]["svd"]}


def earlier_chain(card: dict) -> list[dict]:
    """The stages a shipped card records (cards before chains were recorded: from their fields)."""
    if "chain" in card:
        return card["chain"]
    return [{"stage": stage, "command": card["commands"][0], "seed": card.get("recipe_seed"), "seconds": seconds,
             "commit": card.get("commit", "unknown")} for stage, seconds in card.get("training_seconds", {}).items()]


def chain_before(init: str, folder: Path, dest: Path, shipped: list[dict]) -> list[dict]:
    """The stages that made the weights a stage started from (`init`): `shipped` (the chain on
    `dest`'s card) when it is `dest`, the chain on its own card when it is another shipped model
    (a distilled model's teacher), or the finished stage whose `model` folder it continued and
    the stages before that one."""
    if not init:
        return []
    path = resolve_path(init, folder)
    if path == dest.resolve():
        return shipped
    if (path / "model_card.json").is_file():
        return earlier_chain(json.loads((path / "model_card.json").read_text()))
    stage = path.parent
    if path.name != "model" or not (stage / "config.json").is_file() or not (stage / "stats.json").is_file():
        return []
    for i, entry in enumerate(shipped):  # that stage was shipped already: its card knows what made it
        if "folder" in entry and Path(entry["folder"]).resolve() == stage:
            return shipped[: i + 1]
    entry = chain_entry(stage)
    return chain_before(entry["init"], stage, dest, shipped) + [entry]


def ship(run: str | Path, eval_report: str | Path, dest: Path = EMBEDDED_DIR) -> Path:
    """Package `run`'s last AID or distill stage as the embedded model `dest` (fp16, with a card);
    its base is referenced where it is a folder beside `dest` already, else copied to
    `<dest>-svd`. Refuses to let the shipped folders exceed 40 MB together."""
    run = Path(run)
    report = json.loads(Path(eval_report).read_text())
    stages = stage_folders(run)
    entries = [chain_entry(f) for f in stages]
    aid = [f for f, entry in zip(stages, entries) if entry["stage"] in SHIPPED_STAGES]
    if not aid:
        raise ValueError(f"{run} has no finished AID or distill stage to ship")
    model = aid[-1] / "model"
    spec = json.loads((model / "aid_config.json").read_text())
    base = Path(spec["svd"]) if Path(spec["svd"]).is_absolute() else model / spec["svd"]
    shipped_base = base.resolve().parent == dest.parent.resolve()
    base_dest = base.resolve() if shipped_base else dest.with_name(f"{dest.name}-svd")
    copy_base = not shipped_base
    card_path = dest / "model_card.json"
    shipped = earlier_chain(json.loads(card_path.read_text())) if card_path.is_file() else []
    chain = chain_before(entries[0]["init"], stages[0], dest, shipped) + entries

    tmp, base_tmp = (d.with_name(d.name + ".tmp") for d in (dest, base_dest))
    staged = [(tmp, model)] + ([(base_tmp, base)] if copy_base else [])
    for folder, source in staged:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(source, folder)
        halve_safetensors(folder)
    spec["svd"] = f"../{base_dest.name}"
    (tmp / "aid_config.json").write_text(json.dumps(spec, indent=2))
    replaced = {dest.resolve(), base_dest.resolve(), tmp.resolve(), base_tmp.resolve()}
    others = [d for d in dest.parent.iterdir() if d.is_dir() and d.resolve() not in replaced
              and d.name != "__pycache__" and not d.name.endswith(".tmp")]
    size = sum(p.stat().st_size for d in (tmp, base_tmp if copy_base else base_dest) for p in d.rglob("*")
               if p.is_file())
    total = size + sum(p.stat().st_size for d in others for p in d.rglob("*") if p.is_file())
    if total > MAX_EMBEDDED_BYTES:
        for folder, _ in staged:
            shutil.rmtree(folder)
        raise ValueError(f"the shipped models would be {total / 2**20:.1f} MB together, over the 40 MB budget")
    card = {
        "name": dest.name,
        "description": DESCRIPTIONS.get(dest.name, DESCRIPTIONS["tiny"]),
        "chain": chain,
        "replay": REPLAYS.get(dest.name, REPLAY),
        "commands": [
            f"foresight eval --model {model} --episodes {report['variants']['aid']['episodes']} --json {eval_report}",
            f"python -m foresight.training.ship --run {run} --eval {eval_report}"
            + (f" --name {dest.name}" if dest.name != "tiny" else ""),
        ],
        "evaluation_seeds": report["seeds"],
        "training_seconds": round(sum(entry["seconds"] for entry in chain), 1),
        "torch": torch.__version__,
        "size_bytes": size,
        "package_bytes": total,
        "weights_dtype": "float16 (upcast to float32 on load)",
        "evaluation": report,
    }
    (tmp / "model_card.json").write_text(json.dumps(card, indent=2))
    for final, folder in ((base_dest, base_tmp), (dest, tmp)):
        if not folder.exists():
            continue
        readme = final / "README.md"
        if readme.is_file() and not (folder / "README.md").exists():
            shutil.copy(readme, folder / "README.md")
        shutil.rmtree(final, ignore_errors=True)
        folder.rename(final)
    return dest


def main(argv: list[str] | None = None) -> None:
    """Package a trained run as an embedded model (fp16 weights, model card)."""
    parser = argparse.ArgumentParser(prog="python -m foresight.training.ship", description=main.__doc__)
    parser.add_argument("--run", required=True,
                        help="what `foresight train --out` wrote: a chain (tiny) or one stage (tiny-aid-reword)")
    parser.add_argument("--eval", required=True, help="the JSON report of `foresight eval` on that run")
    parser.add_argument("--name", choices=sorted(EMBEDDED), default="tiny",
                        help="which embedded model it becomes (tiny-turbo: a distilled run)")
    args = parser.parse_args(argv)
    dest = ship(args.run, args.eval, EMBEDDED[args.name])
    print(f"shipped {args.run}'s last stage as the embedded model {args.name} in {dest}")


if __name__ == "__main__":
    main()
