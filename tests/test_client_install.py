"""The robot computer's install: `packages/foresight-client` built as a wheel and installed into
a fresh venv, with only numpy, pyzmq and msgpack, talking to a node.

The wheel must hold the client's modules and nothing else (no weights, no model code), stay small,
and declare only the three dependencies; installed alone it imports nothing beyond them. The node
is a stand-in predictor in this process, on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from test_replay import Echo, Node

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "packages" / "foresight-client"
MODULES = {"__init__.py", "client.py", "protocol.py", "wire.py"}
MAX_WHEEL_BYTES = 100_000
ALLOWED = {"numpy", "pyzmq", "msgpack", "foresight-client", "pip", "setuptools", "wheel"}
SCRIPT = """
import json, sys
import numpy as np
from foresight_client import ForesightClient
with ForesightClient(sys.argv[1], timeout_s=60, retries=0) as client:
    info = client.info()
    frames = np.full((1, 64, 64, 3), 7, np.uint8)
    pred = client.predict(frames, ["push the red block to the left", "pick up the red block"])
heavy = sorted(m for m in ("torch", "diffusers", "cv2", "sim_bridge", "foresight") if m in sys.modules)
import foresight_client
print(json.dumps({"shape": list(pred.shape), "value": int(pred.max()), "heavy": heavy,
                  "num_frames": info["num_frames"], "from": foresight_client.__file__}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = shutil.copytree(CLIENT, out / "source", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", "-w", str(out), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (path,) = out.glob("foresight_client-*.whl")
    return path


def test_the_client_wheel_is_small_and_holds_only_the_client(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = Parser().parsestr(archive.read(metadata).decode()).get_all("Requires-Dist")
    code = {n.split("/", 1)[1] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert {n.split("/")[0] for n in names if ".dist-info" not in n} == {"foresight_client"}
    assert code == MODULES, code
    assert sorted(r.split(">")[0].split("=")[0].strip() for r in requires) == ["msgpack", "numpy", "pyzmq"]
    assert wheel.stat().st_size < MAX_WHEEL_BYTES, wheel.stat().st_size


@pytest.mark.slow
def test_client_installs_alone_and_talks_to_a_node(tmp_path, wheel):
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)],
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
