"""foresight: instruction-conditioned visual foresight (AID on Stable Video Diffusion) as a ZeroMQ node.

Import what you need from its modules: `foresight.pipeline.load_pipeline` for the model,
`foresight.node.client.ForesightClient` on a robot computer (numpy, pyzmq and msgpack only;
this package file imports nothing heavy on purpose).
"""

__version__ = "0.1.0"
