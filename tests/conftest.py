import logging

import pytest
import torch

from foresight.loading import build_tiny_svd
from foresight.model_dir import build_tiny_random

logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_model():
    """The random tiny AID model (shared: tests must not modify it)."""
    torch.manual_seed(0)
    return build_tiny_random().eval()


@pytest.fixture()
def tiny_svd():
    return build_tiny_svd(seed=0)
