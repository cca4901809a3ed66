"""Client for the foresight node, for robot controllers: numpy, pyzmq and msgpack only.

Lazy Pirate (zguide ch. 4): a REQ socket, poll with a timeout, and on silence close the socket
with LINGER=0, reconnect and resend, a bounded number of times. A REQ socket that lost its reply
is stuck forever, so throwing it away is the only reliable recovery. Predict requests are safe to
resend: with a fixed seed the node gives the same answer twice.

    with ForesightClient("tcp://127.0.0.1:5555") as node:
        future = node.predict(frames, "put the red block in the bowl", steps=10)  # (N-K, H, W, 3)

One client per thread (ZeroMQ sockets are not thread-safe).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zmq
import zmq.auth

from foresight_client import wire
from foresight_client.protocol import ErrorCode, NodeError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_TIMEOUT_S = 60.0  # a CPU model at full steps takes seconds; a GPU node answers far sooner
DEFAULT_RETRIES = 2  # resends after a timeout, so three attempts in all


class NodeUnavailable(NodeError):
    """No reply after every attempt: the node is down, unreachable, or refused our CURVE key."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, message)


@dataclass(frozen=True)
class CurveKeys:
    """Keys for an encrypted, authenticated connection: the server's public key and our key pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_files(cls, server_public_file: str | Path, client_secret_file: str | Path) -> CurveKeys:
        """Read zmq.auth certificate files (as written by zmq.auth.create_certificates)."""
        server_public, _ = zmq.auth.load_certificate(server_public_file)
        public, secret = zmq.auth.load_certificate(client_secret_file)
        if secret is None:
            raise ValueError(f"{client_secret_file} holds no secret key (give the .key_secret file)")
        return cls(server_public, public, secret)


class ForesightClient:
    """Talks to one node; every method raises NodeError (with `.code`) on an error reply."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        curve: CurveKeys | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.retries = retries
        self.curve = curve
        self._ctx = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._ids = itertools.count()

    def __enter__(self) -> ForesightClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _connect(self) -> zmq.Socket:
        socket = self._ctx.socket(zmq.REQ)
        socket.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            socket.curve_serverkey = self.curve.server_public
            socket.curve_publickey = self.curve.public
            socket.curve_secretkey = self.curve.secret
        socket.connect(self.endpoint)
        return socket

    def call(self, request: dict) -> dict:
        """Send one request map and return the reply map; raise NodeError on an error reply."""
        body = wire.packb(request)
        attempts = 1 + self.retries
        for attempt in range(1, attempts + 1):
            if self._socket is None:
                self._socket = self._connect()
            self._socket.send(body)
            if self._socket.poll(int(self.timeout_s * 1000), zmq.POLLIN):
                reply = wire.unpackb(self._socket.recv())
                break
            log.warning("no reply from %s in %.1f s (attempt %d of %d)", self.endpoint, self.timeout_s, attempt, attempts)
            self.close()  # a REQ socket without its reply is stuck: drop it, reconnect on the next try
        else:
            raise NodeUnavailable(f"no reply from {self.endpoint} after {attempts} attempts of {self.timeout_s} s")
        if not isinstance(reply, dict) or "ok" not in reply:
            raise NodeError(ErrorCode.NOT_A_MAP, f"malformed reply from {self.endpoint}: {reply!r:.80}")
        if not reply["ok"]:
            error = reply.get("error") or {}
            raise NodeError(str(error.get("code")), str(error.get("message")))
        return reply

    def predict(
        self,
        frames: np.ndarray | Sequence[bytes],
        instruction: str | Sequence[str],
        *,
        num_frames: int | None = None,
        steps: int | None = None,
        guidance_frame: float | None = None,
        guidance_text: float | None = None,
        seed: int | Sequence[int] | None = None,
        deadline: float | None = None,
    ) -> np.ndarray:
        """Predict future frames from K context frames.

        frames: uint8 RGB (K, H, W, 3) of any size (one (H, W, 3) frame when K == 1), or K
        PNG/JPEG byte strings. Returns uint8 (N-K, H, W, 3) for one instruction string, or
        (M, N-K, H, W, 3) for a list of M instructions, at the model's resolution.
        """
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = frames[None]
        request: dict[str, Any] = {
            "method": "predict",
            "id": next(self._ids),
            "frames": frames if isinstance(frames, np.ndarray) else list(frames),
            "instruction": instruction if isinstance(instruction, str) else list(instruction),
        }
        guidance = {key: value for key, value in (("frame", guidance_frame), ("text", guidance_text)) if value is not None}
        options = {"num_frames": num_frames, "steps": steps, "guidance": guidance or None, "deadline": deadline,
                   "seed": seed if seed is None or isinstance(seed, int) else list(seed)}
        request.update({key: value for key, value in options.items() if value is not None})
        out = self.call(request)["frames"]
        return out[0] if isinstance(instruction, str) else out

    def info(self) -> dict:
        """The model card, resolution, N, K, defaults and limits: the handshake before predicting."""
        return self.call({"method": "info", "id": next(self._ids)})

    def health(self) -> dict:
        return self.call({"method": "health", "id": next(self._ids)})
