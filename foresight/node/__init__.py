"""The ZeroMQ foresight node. Importing this package pulls in only the light client side
(numpy, pyzmq, msgpack); the server lives in `foresight.node.server`."""

from foresight.node.client import CurveKeys, ForesightClient, NodeUnavailable
from foresight.node.protocol import ErrorCode, NodeError

__all__ = ["CurveKeys", "ErrorCode", "ForesightClient", "NodeError", "NodeUnavailable"]
