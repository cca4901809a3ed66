"""`foresight serve` options: the model loads in the dtype asked for, and --compile warms up before serving."""

from __future__ import annotations

import argparse

import pytest
import torch

from foresight.node.cli import add_serve_arguments, load_options, load_predictor
from foresight.node.worker import warm_up


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(["--model", "tiny-random", "--threads", "1", *argv])


@pytest.mark.parametrize("name,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_the_served_model_computes_in_the_dtype_asked_for(name: str, dtype: torch.dtype) -> None:
    predictor = load_predictor(parse("--dtype", name))
    assert predictor.model.dtype == dtype and predictor.info()["dtype"] == str(dtype).removeprefix("torch.")


def test_compile_reaches_the_pipeline_and_warm_up_predicts_once(caplog) -> None:
    """--compile compiles the UNet in load_pipeline (its own test in test_precision.py: ~20 s of compiling
    on 2 cores), and load_predictor then runs `warm_up`: one prediction before the node serves."""
    assert load_options(parse("--compile"))["compile"] is True and load_options(parse())["compile"] is False
    predictor = load_predictor(parse())
    with caplog.at_level("INFO", logger="foresight"):
        warm_up(predictor)
    assert sum("predicted 1 x 7 frames" in r.getMessage() for r in caplog.records) == 1
