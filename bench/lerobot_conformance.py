"""Does lerobot take our LeRobot v3 datasets as its own, and do we read lerobot's? Both ways.

    python -m bench.lerobot_conformance --lerobot-python /path/to/py312-venv/bin/python
    python -m bench.lerobot_conformance --make-venv     # makes OUT/venv with lerobot[dataset,training]

lerobot 0.6 needs Python 3.12 and pins torch below 2.12, so it lives in its own venv (a
multi-GB torch from the registry) and this is not part of `make test`. Ours -> lerobot: the
simulator writes a dataset with `sim_bridge.data.lerobot.write_dataset`; lerobot loads it,
recomputes its stats (from blanked ones) and compares, merges two copies, resumes it with one
more episode, and trains ACT on it for 2 steps (`lerobot-train`); its decode of episode 0 is
compared with ours. lerobot -> ours: lerobot writes a video dataset; `find_episodes` reads it,
with frames, states, actions and tasks compared with lerobot's own decode. lerobot's side is
`bench/lerobot_side.py`, which imports nothing of this project. Writes OUT/lerobot_conformance.json
and prints a table; exits 1 when a check failed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sim_bridge.common.logs import setup_logging
from sim_bridge.common.tables import markdown_table
from sim_bridge.data.lerobot import write_dataset
from sim_bridge.data.readers import find_episodes
from sim_bridge.simulator.tabletop import make_episodes
from sim_bridge.simulator.tasks import TRAINED_KINDS

SIDE = Path(__file__).with_name("lerobot_side.py")
LEROBOT = "lerobot[dataset,training]==0.6.1"
SEEDS = range(3_000_000, 3_000_004)  # outside training, evaluation and demo seeds


def python312() -> str:
    found = shutil.which("python3.12") or next(iter(sorted(glob.glob(os.path.expanduser(
        "~/.pyenv/versions/3.12*/bin/python")))), None)
    if found is None:
        raise SystemExit("no Python 3.12 found (python3.12 on PATH or pyenv); lerobot 0.6 needs it")
    return found


def make_venv(out: Path) -> str:
    venv = out / "venv"
    subprocess.run([python312(), "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", LEROBOT], check=True)
    return str(venv / "bin" / "python")


def lerobot_side(python: str, out: Path, *args: str) -> dict:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_LEROBOT_HOME": str(out / "hf_home"), "SVT_LOG": "1"}
    done = subprocess.run([python, str(SIDE), *args], capture_output=True, text=True, env=env, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"lerobot's side failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def ours_to_lerobot(python: str, out: Path) -> dict:
    dataset = write_dataset(make_episodes(SEEDS, 64, 16, TRAINED_KINDS), out / "ours")
    work = out / "ours_work"
    work.mkdir()
    result = lerobot_side(python, out, "check", str(dataset), str(work))
    theirs = np.load(work / "lerobot_decode_ep0.npy")
    mine = find_episodes(dataset)[0].load().frames
    result["decode_ep0_identical_to_ours"] = bool(np.array_equal(theirs, mine))
    return result


def lerobot_to_ours(python: str, out: Path) -> dict:
    work = out / "theirs"
    work.mkdir()
    result = lerobot_side(python, out, "write", str(work))
    episodes = [source.load() for source in find_episodes(work / "dataset")]
    checks = {"episodes_found": len(episodes)}
    for e, episode in enumerate(episodes):
        checks[f"ep{e}"] = {
            "frames_identical": bool(np.array_equal(episode.frames, np.load(work / f"decode_ep{e}.npy"))),
            "states_exact": bool(np.array_equal(episode.states, np.load(work / f"state_ep{e}.npy"))),
            "actions_exact": bool(np.array_equal(episode.actions, np.load(work / f"action_ep{e}.npy"))),
            "task_equal": episode.instruction == result["tasks"][e]}
    return result | checks


def passed(direction: dict) -> bool:
    flags = [v for v in direction.values() if isinstance(v, bool)]
    flags += [v["ok"] for v in direction.values() if isinstance(v, dict) and "ok" in v]
    flags += [x for v in direction.values() if isinstance(v, dict) and "ok" not in v
              for x in v.values() if isinstance(x, bool)]
    return all(flags)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lerobot_conformance", description=__doc__.split("\n")[0])
    parser.add_argument("--lerobot-python", help="python of a venv with " + LEROBOT)
    parser.add_argument("--make-venv", action="store_true", help="make OUT/venv with Python 3.12 and lerobot")
    parser.add_argument("--out", type=Path, default=Path("bench_out/lerobot"))
    args = parser.parse_args(argv)
    setup_logging()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    python = args.lerobot_python or (make_venv(args.out) if args.make_venv else None)
    if python is None:
        raise SystemExit("give --lerobot-python PATH or --make-venv")
    start = time.perf_counter()
    report = {"date": time.strftime("%Y-%m-%d"), "ours_to_lerobot": ours_to_lerobot(python, args.out),
              "lerobot_to_ours": lerobot_to_ours(python, args.out)}
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["passed"] = passed(report["ours_to_lerobot"]) and passed(report["lerobot_to_ours"])
    (args.out / "lerobot_conformance.json").write_text(json.dumps(report, indent=2))
    ours = report["ours_to_lerobot"]
    rows = [(f"ours -> lerobot {ours['lerobot']}: {name}", "passed" if ours[name]["ok"] else "FAILED",
             {k: v for k, v in ours[name].items() if k not in ("ok", "trace", "command")})
            for name in ("load", "recompute_stats", "merge", "resume", "train_act_2_steps")]
    rows.append(("ours -> lerobot: lerobot's decode of episode 0 equals ours",
                 "passed" if ours["decode_ep0_identical_to_ours"] else "FAILED", ""))
    theirs = report["lerobot_to_ours"]
    rows += [(f"lerobot -> ours: episode {e}", "passed" if all(theirs[f"ep{e}"].values()) else "FAILED",
              theirs[f"ep{e}"]) for e in range(theirs["episodes_found"])]
    print(markdown_table(("check", "result", "details"), rows))
    print(f"{'passed' if report['passed'] else 'FAILED'} in {report['seconds']} s; {args.out / 'lerobot_conformance.json'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
