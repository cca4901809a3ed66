"""`foresight serve` options: dtype and compile reach load_pipeline, and --compile warms up before serving."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
import torch

import foresight.pipeline
from foresight.node.cli import add_serve_arguments, load_options, load_predictor


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(["--model", "tiny-random", *argv])


@pytest.mark.parametrize("name,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_dtype_and_compile_reach_load_pipeline(name: str, dtype: torch.dtype) -> None:
    options = load_options(parse("--dtype", name, "--compile", "--threads", "1"))
    assert options == {"device": "cpu", "threads": 1, "dtype": dtype, "compile": True}
    assert load_options(parse())["dtype"] is torch.float32 and load_options(parse())["compile"] is False


def test_compile_runs_one_warm_up_prediction_before_the_node_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []
    real = foresight.pipeline.load_pipeline

    def load(spec: str, **options: Any):
        calls.append(("load", options["compile"]))
        pipe = real(spec, threads=1)  # the real model, uncompiled: compiling is the pipeline's own test
        predict = pipe.predict
        pipe.predict = lambda *args, **kw: calls.append(("predict", args[1])) or predict(*args, **kw)
        return pipe

    monkeypatch.setattr(foresight.pipeline, "load_pipeline", load)
    load_predictor(parse("--compile"))
    assert calls == [("load", True), ("predict", ["warm up"])]
    calls.clear()
    load_predictor(parse())
    assert calls == [("load", False)]
