import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
import zmq
from foresight_client.client import ForesightClient
from hypothesis import HealthCheck, settings

from foresight.loading import build_tiny_svd
from foresight.model_dir import build_tiny_random, save_model_dir
from foresight.node.process import running_node

logging.getLogger("transformers").setLevel(logging.ERROR)

# Property tests take their example budget from the profile: "default" keeps `make test` short and
# reproducible; `pytest tests/test_node_properties.py --hypothesis-profile=long -s` is the long run.
_PROFILE = {"deadline": None, "derandomize": True, "suppress_health_check": list(HealthCheck)}
settings.register_profile("default", max_examples=150, **_PROFILE)
settings.register_profile("long", max_examples=7_000, **_PROFILE)  # ~21,000 examples over the three properties
settings.load_profile("default")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Numbers, not speed, are under test: one torch thread keeps a shared 2-core box fast."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_random_folder(tmp_path_factory) -> Path:
    """tiny-random as a model folder (`model/`) with its SVD folder beside it (`svd/`)."""
    root = tmp_path_factory.mktemp("tiny-random-folder")
    model = build_tiny_random()
    model.svd_components().save_pretrained(root / "svd")
    save_model_dir(model, root / "model", svd=str(root / "svd"))
    return root / "model"


@pytest.fixture(scope="session")
def run_job() -> Callable[[Path], Path]:
    """Runs a training job file as `foresight train FILE` would: each job its own run (a fresh
    accelerate state); returns what it wrote."""
    from accelerate.state import AcceleratorState

    from foresight.training.config import load_jobs
    from foresight.training.trainer import train

    def run(path: Path) -> Path:
        AcceleratorState._reset_state(True)
        (cfg,) = load_jobs(str(path))
        return train(cfg)

    return run


@pytest.fixture(scope="session")
def tiny_model():
    """The random tiny AID model (shared: tests must not modify it)."""
    torch.manual_seed(0)
    return build_tiny_random().eval()


@pytest.fixture()
def tiny_svd():
    return build_tiny_svd(seed=0)


@dataclass(frozen=True)
class LiveNode:
    endpoint: str
    pid: int
    log_path: Path
    socket: zmq.Socket  # a DEALER connected to it; one exchange at a time


@pytest.fixture(scope="session")
def live_node(tmp_path_factory) -> Iterator[LiveNode]:
    """One `foresight serve --model tiny-random` child for the whole run, for tests that throw messages at it.

    1 MiB messages at most, so size limits are cheap to reach. At the end the node must still be
    the same process and answer a valid request.
    """
    log_path = tmp_path_factory.mktemp("live-node") / "node.log"
    with running_node("tiny-random", log_path, ("--threads", "1", "--max-message-mb", "1")) as endpoint:
        with ForesightClient(endpoint, timeout_s=60, retries=0) as client:
            pid = client.health()["pid"]
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(endpoint)
        try:
            yield LiveNode(endpoint, pid, log_path, socket)
        finally:
            socket.close()
        with ForesightClient(endpoint, timeout_s=120, retries=0) as client:
            assert client.health()["pid"] == pid, f"the node was restarted; see {log_path}"
            frames = client.predict(np.zeros((1, 64, 64, 3), np.uint8), ["a", "b"], steps=1, num_frames=2)
            assert frames.shape == (2, 1, 64, 64, 3)
