"""One logging set-up for every entry point: the `foresight` command, the sim_bridge scripts,
the benchmarks and the engine builder all log the same way (standard library only, so the
client side and the simulator may use it)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that log at INFO about things a user of this project does not act on.
QUIET = ("transformers", "diffusers", "urllib3", "PIL", "matplotlib", "onnx", "onnxruntime")


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG when verbose) to stderr with time and logger name; the chatty libraries at WARNING."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
