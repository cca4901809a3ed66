"""The robot computer's install: the package core (the ZeroMQ client) in a fresh venv, with only
numpy, pyzmq and msgpack, talking to a node.

The venv gets the repository's real pyproject.toml and the files the client consists of, so the
test checks both the core dependency list and that the client imports nothing beyond it. The
node is a stand-in predictor in this process, on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from test_replay import Echo, Node

ROOT = Path(__file__).resolve().parents[1]
CLIENT_FILES = ("pyproject.toml", "README.md", "foresight/__init__.py",
                "foresight/node/__init__.py", "foresight/node/client.py",
                "foresight/node/wire.py", "foresight/node/protocol.py")
ALLOWED = {"numpy", "pyzmq", "msgpack", "foresight", "pip", "setuptools", "wheel"}
SCRIPT = """
import json, sys
import numpy as np
from foresight.node import ForesightClient
with ForesightClient(sys.argv[1], timeout_s=60, retries=0) as client:
    info = client.info()
    frames = np.full((1, 64, 64, 3), 7, np.uint8)
    pred = client.predict(frames, ["push the red block to the left", "pick up the red block"])
heavy = sorted(m for m in ("torch", "diffusers", "cv2", "sim_bridge") if m in sys.modules)
import foresight
print(json.dumps({"shape": list(pred.shape), "value": int(pred.max()), "heavy": heavy,
                  "num_frames": info["num_frames"], "from": foresight.__file__}))
"""


@pytest.mark.slow
def test_client_installs_alone_and_talks_to_a_node(tmp_path):
    source = tmp_path / "src"
    for name in CLIENT_FILES:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", str(source)],
                             capture_output=True, text=True, timeout=600, env=clean)
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, check=True, env=clean)
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert installed <= ALLOWED, f"the client pulled in {sorted(installed - ALLOWED)}"
    with Node(Echo()) as endpoint:
        run = subprocess.run([str(python), "-c", SCRIPT, endpoint], capture_output=True,
                             text=True, timeout=120, cwd=tmp_path, env=clean)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert Path(result.pop("from")).is_relative_to(env_dir)  # the installed copy, not the repo
    assert result == {"shape": [2, 7, 64, 64, 3], "value": 7, "heavy": [], "num_frames": 8}
