"""The robot computer's side of the foresight node: wire codec, protocol and client.

numpy, pyzmq and msgpack only; no model, no weights. It installs on its own
(`pip install packages/foresight-client`), the way openpi ships `openpi-client`.
"""

from foresight_client.client import CurveKeys, ForesightClient, NodeUnavailable
from foresight_client.protocol import ErrorCode, NodeError

__version__ = "0.1.0"
__all__ = ["CurveKeys", "ErrorCode", "ForesightClient", "NodeError", "NodeUnavailable"]
