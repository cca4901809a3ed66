"""`foresight serve`: its options, loading the model, and running the node until a signal."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from foresight.dtypes import DTYPE_NAMES
from foresight.node.process import SERVE_COMMAND
from foresight.node.server import (
    DEFAULT_BIND,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_UNREAD_REPLIES,
    ServerConfig,
    curve_keys,
    serve,
)
from foresight.node.supervise import supervise
from foresight.node.worker import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_QUEUE,
    Predictor,
    warm_up,
)
from sim_bridge.common.logs import setup_logging

log = logging.getLogger(__name__)

RESTART_POLICIES = ("no", "on-failure")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `foresight serve`."""
    parser.add_argument("--model", default="tiny", help="'tiny' (embedded), 'tiny-turbo' (its 4-step distilled student), 'tiny-random', or a model folder")
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
    parser.add_argument("--max-unread-replies", type=int, default=DEFAULT_MAX_UNREAD_REPLIES,
                        help="replies held for a client that does not read them; later ones are dropped (default %(default)s)")
    parser.add_argument("--curve-secret", type=Path, default=None, help="server certificate with secret key (zmq.auth)")
    parser.add_argument("--curve-clients", type=Path, default=None, help="folder of allowed client public keys")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback --bind without CURVE (anyone who can reach it can use the model)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32", help="model weights and activations (default fp32)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet; one warm-up prediction runs before the node answers")
    parser.add_argument("--restart", choices=RESTART_POLICIES, default="no",
                        help="on-failure: run the node in a child process and start it again whenever it crashes "
                             "(as systemd's Restart=on-failure; docs/foresight-node.service) (default %(default)s)")
    ray = parser.add_argument_group("Ray Serve (foresight[ray]): the model in replicas, this node as their front")
    ray.add_argument("--ray", default=None, metavar="ADDRESS|local",
                     help="serve through Ray Serve: a cluster address (ray://host:10001 or auto), or 'local' to start one here")
    ray.add_argument("--replicas", type=int, default=1, help="replicas holding the model (default 1)")
    ray.add_argument("--max-replicas", type=int, default=None,
                     help="autoscale up to this many replicas on in-flight requests (default: --replicas)")
    ray.add_argument("--max-inflight", type=int, default=None,
                     help="requests this front has in the deployment before OVERLOADED (default: --max-queue)")
    ray.add_argument("--ray-app", default="foresight", help="Ray Serve application name; fronts with the same name share it")


def run_serve(args: argparse.Namespace) -> int:
    """Entry point of `foresight serve`: load the model, serve until a signal, exit 0 (SystemExit 2 on a bad setup)."""
    setup_logging()
    config = ServerConfig(
        bind=args.bind,
        max_message_bytes=int(args.max_message_mb * 2**20),
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        max_unread_replies=args.max_unread_replies,
        curve_secret_file=args.curve_secret,
        curve_clients_dir=args.curve_clients,
        insecure=args.insecure,
    )
    try:
        curve_keys(config)  # refuse a bad setup before minutes of model loading
        check_ray_arguments(args)
    except ValueError as exc:
        print(f"foresight serve: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None  # an exit status, whichever entry point called this
    if args.restart == "on-failure":
        return supervise([*SERVE_COMMAND, *serve_argv(args)])
    if args.ray is not None:
        return serve_through_ray(args, config)
    # Load on a short-lived thread so the main thread never owns an OpenMP pool. Pools are per
    # thread: with one on the main thread and one on the inference thread, libgomp counts more
    # threads than cores and throttles its spin-waiting, and every small op pays a wake-up
    # (25 steps of the embedded model: 3.6 s instead of 2.2 s). A pool goes away with its thread.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="foresight-load") as loader:
        try:
            predictor = loader.submit(load_predictor, args).result()
        except FileNotFoundError as exc:  # no such model or engine folder: a restart would not help
            print(f"foresight serve: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    serve(predictor, config)
    return 0


def serve_argv(args: argparse.Namespace) -> list[str]:
    """The `foresight serve` options that give `args` again, less --restart: a supervised child's command line."""
    parser = argparse.ArgumentParser(add_help=False)
    add_serve_arguments(parser)
    argv: list[str] = []
    for action in parser._actions:
        value = getattr(args, action.dest, action.default)
        if not action.option_strings or action.dest == "restart" or value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        argv += [flag] if action.nargs == 0 else [flag, str(value)]
    return argv


def check_ray_arguments(args: argparse.Namespace) -> None:
    if args.replicas < 1:
        raise ValueError(f"--replicas must be at least 1, got {args.replicas}")
    if args.max_replicas is not None and args.max_replicas < args.replicas:
        raise ValueError(f"--max-replicas ({args.max_replicas}) must be at least --replicas ({args.replicas})")


def serve_through_ray(args: argparse.Namespace, config: ServerConfig) -> int:
    """`foresight serve --ray`: deploy (or join) the replicas, run the front; stop a cluster started here."""
    try:
        from foresight.node import ray_worker
    except ImportError as exc:
        print(f"foresight serve: error: --ray needs the ray extra (pip install 'foresight[ray]'): {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    import ray
    from ray import serve as ray_serve

    from foresight.pipeline import load_pipeline

    started_here = ray_worker.connect(args.ray)
    try:
        deployment = ray_worker.DeploymentConfig(
            load=functools.partial(load_pipeline, args.model, **load_options(args)), replicas=args.replicas,
            max_replicas=args.max_replicas or args.replicas, max_batch=args.max_batch, max_queue=args.max_queue,
            gpus_per_replica=1.0 if args.device.startswith("cuda") else 0.0, warm_up=args.compile)
        handle = ray_worker.deployment_handle(deployment, args.ray_app)
        worker = ray_worker.RayWorker(handle, args.ray_app, args.max_inflight or args.max_queue)
        serve(worker, config)
    finally:
        if started_here:
            ray_serve.shutdown()
            ray.shutdown()
    return 0


def load_options(args: argparse.Namespace) -> dict:
    """`foresight serve` options -> keyword arguments of foresight.pipeline.load_pipeline."""
    options = {key: value for key, value in (("backend", args.backend), ("engines", args.engines)) if value is not None}
    return options | {"device": args.device, "threads": args.threads, "dtype": args.dtype, "compile": args.compile}


def load_predictor(args: argparse.Namespace) -> Predictor:
    """Load the model; with --compile, run one prediction so compilation is over before the first request."""
    from foresight.pipeline import (
        load_pipeline,  # the model is only needed by the serving process
    )

    predictor = load_pipeline(args.model, **load_options(args))
    if args.compile:
        warm_up(predictor)
    return predictor


def main(argv: list[str] | None = None) -> int:
    """`python -m foresight.node.cli` is `foresight serve` (how child nodes and the supervisor start it)."""
    parser = argparse.ArgumentParser(prog="foresight serve", description="run the ZeroMQ foresight node")
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
