"""The node over Ray Serve: same frames as in process, two replicas share the work, a killed one costs nothing.

Ray binds to the machine's address, so the Ray part (tests/node_ray_scenario.py) runs in a
subprocess inside `../shared/loopback-only` (a network namespace with only `lo`), with node
address 127.0.0.1, and stops its cluster at the end. One cluster serves all three checks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = REPO.parent / "shared" / "loopback-only"
SCENARIO_TIMEOUT_S = 600

pytestmark = [
    pytest.mark.xdist_group("ray"),  # under pytest -n: one process starts the one cluster
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install 'foresight[ray]')"),
    pytest.mark.skipif(not LOOPBACK.exists(), reason=f"{LOOPBACK} is missing: Ray may only start in a loopback-only namespace"),
]


@pytest.fixture(scope="module")
def scenario() -> dict:
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                        "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([str(LOOPBACK), sys.executable, str(REPO / "tests" / "node_ray_scenario.py")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=SCENARIO_TIMEOUT_S)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"scenario failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_ray_path_is_bit_identical_to_in_process(scenario: dict) -> None:
    assert scenario["identity"]["ok"] and scenario["identity"]["identical"], scenario["identity"]


def test_two_replicas_both_serve_and_info_lists_them(scenario: dict) -> None:
    assert scenario["both"]["ok"] == 12 and len(scenario["both"]["replicas"]) == 2, scenario["both"]
    seen = scenario["info_ray"]["replicas_seen"]
    assert len(seen) >= 2 and all(replica["backend"] == "torch" for replica in seen), seen


def test_killed_replica_costs_no_client_errors_and_is_replaced(scenario: dict) -> None:
    kill = scenario["kill"]
    assert kill["errors"] == 0, kill
    assert kill["replaced_after_s"] is not None and kill["served_by_victim_after_kill"] == 0, kill
