"""foresight: instruction-conditioned visual foresight (AID on Stable Video Diffusion) as a ZeroMQ node.

Import what you need from its modules: `foresight.pipeline.load_pipeline` for the model,
`foresight.node` for the server. A robot computer needs only `foresight_client`, its own light
package (`packages/foresight-client`). This file imports nothing heavy on purpose.
"""

__version__ = "0.1.0"
