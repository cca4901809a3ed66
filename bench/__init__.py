"""Benchmarks of the foresight node, measured as ratios in one process on one machine.

    python -m bench                      # everything, ~8 minutes on 2 idle cores; writes bench_out/
    python -m bench --quick --out /tmp/b # a smoke run of every code path

Sections: 1 the node against diffusers' StableVideoDiffusionPipeline on equal-size weights,
2 ONNX Runtime (TensorRT on a GPU) against PyTorch eager, 3 one request with M instructions
against M requests, 4 the node's overhead against an in-process call, 5 latency against frames,
resolution and steps, 6 concurrent clients. See bench.__main__ for the options.
"""
