"""Packaging a `foresight train tiny` run as the embedded model: fp16 weights in the package, a model card.

The card records what someone needs to reproduce and judge the model: the exact commands, the
seeds, the commit, the training wall time per stage, and the evaluation numbers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from foresight.model_dir import EMBEDDED_DIR

MAX_EMBEDDED_BYTES = 25 * 1024 * 1024


def halve_safetensors(folder: Path) -> None:
    """Rewrite every safetensors file under `folder` with float tensors in fp16 (loaders upcast)."""
    for path in folder.rglob("*.safetensors"):
        state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        save_file(state, str(path), metadata={"format": "pt"})


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def ship(run: str | Path, eval_report: str | Path, dest: Path = EMBEDDED_DIR) -> Path:
    """Package a `foresight train tiny` run folder as the embedded model, fp16, with a model card.

    `run/base/svd` becomes the text-free base `tiny-svd` beside `dest`, and `run/aid/model` the
    AID model `dest`, pointing at it (`"svd": "../tiny-svd"`); refuses to exceed 25 MB in all.
    """
    run = Path(run)
    report = json.loads(Path(eval_report).read_text())
    stats = {stage: json.loads((run / stage / "stats.json").read_text()) for stage in ("vae", "base", "aid")}
    config = json.loads((run / "aid" / "config.json").read_text())
    base_dest = dest.with_name(f"{dest.name}-svd")
    tmp, base_tmp = (d.with_name(d.name + ".tmp") for d in (dest, base_dest))
    for folder, source in ((tmp, run / "aid" / "model"), (base_tmp, run / "base" / "svd")):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(source, folder)
        halve_safetensors(folder)
    spec = json.loads((tmp / "aid_config.json").read_text())
    spec["svd"] = f"../{base_dest.name}"
    (tmp / "aid_config.json").write_text(json.dumps(spec, indent=2))
    size = sum(p.stat().st_size for d in (tmp, base_tmp) for p in d.rglob("*") if p.is_file())
    if size > MAX_EMBEDDED_BYTES:
        shutil.rmtree(tmp)
        shutil.rmtree(base_tmp)
        raise ValueError(f"embedded model would be {size / 2**20:.1f} MB, over the 25 MB budget")
    card = {
        "name": "tiny",
        "description": "AID on a small SVD-architecture model, trained on the tabletop simulator",
        "commands": [
            f"foresight train tiny --out {run}",
            f"foresight eval --model {run / 'aid' / 'model'} --episodes {report['variants']['aid']['episodes']} "
            f"--json {eval_report}",
            f"foresight ship --run {run} --eval {eval_report}",
        ],
        "training_seeds": [0, config["data"]["episodes"]],
        "evaluation_seeds": report["seeds"],
        "recipe_seed": config["seed"],
        "commit": _commit(),
        "training_seconds": {stage: s["seconds"] for stage, s in stats.items()},
        "torch": torch.__version__,
        "size_bytes": size,
        "weights_dtype": "float16 (upcast to float32 on load)",
        "evaluation": report,
    }
    (tmp / "model_card.json").write_text(json.dumps(card, indent=2))
    for final, staged in ((base_dest, base_tmp), (dest, tmp)):
        if final.exists() and final.is_dir():
            readme = final / "README.md"
            if readme.is_file() and not (staged / "README.md").exists():
                shutil.copy(readme, staged / "README.md")
            shutil.rmtree(final)
        staged.rename(final)
    return dest
