"""`foresight serve`: its options, loading the model, and running the node until a signal."""

from __future__ import annotations

import argparse
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from foresight.node.server import DEFAULT_BIND, DEFAULT_MAX_MESSAGE_BYTES, ServerConfig, serve
from foresight.node.worker import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `foresight serve`."""
    parser.add_argument("--model", default="tiny", help="'tiny' (embedded), 'tiny-random', or a model folder")
    parser.add_argument("--bind", default=DEFAULT_BIND, help="ZeroMQ endpoint to bind (default %(default)s)")
    parser.add_argument("--backend", default=None, help="auto | tensorrt | onnxruntime | torch (default: the pipeline's)")
    parser.add_argument("--engines", default=None, help="folder of exported engines (export/build_engines.py)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda[:N] for the GPU backends")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for PyTorch and ONNX Runtime (default 0: each runtime's own)")
    parser.add_argument("--max-message-mb", type=float, default=DEFAULT_MAX_MESSAGE_BYTES / 2**20,
                        help="larger messages are refused by ZeroMQ (peer disconnected)")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="samples per model call")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, help="queued requests before OVERLOADED")
    parser.add_argument("--curve-secret", type=Path, default=None, help="server certificate with secret key (zmq.auth)")
    parser.add_argument("--curve-clients", type=Path, default=None, help="folder of allowed client public keys")


def run_serve(args: argparse.Namespace) -> int:
    """Entry point of `foresight serve`: load the model, serve until a signal, exit 0."""
    from foresight.pipeline import load_pipeline  # the model is only needed by the serving process

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    choices = {key: value for key, value in (("backend", args.backend), ("engines", args.engines)) if value is not None}
    choices |= {"device": args.device, "threads": args.threads}
    # Load on a short-lived thread so the main thread never owns an OpenMP pool. Pools are per
    # thread: with one on the main thread and one on the inference thread, libgomp counts more
    # threads than cores and throttles its spin-waiting, and every small op pays a wake-up
    # (25 steps of the embedded model: 3.6 s instead of 2.2 s). A pool goes away with its thread.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="foresight-load") as loader:
        predictor = loader.submit(load_pipeline, args.model, **choices).result()
    config = ServerConfig(
        bind=args.bind,
        max_message_bytes=int(args.max_message_mb * 2**20),
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        curve_secret_file=args.curve_secret,
        curve_clients_dir=args.curve_clients,
    )
    serve(predictor, config)
    return 0
