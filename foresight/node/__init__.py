"""The ZeroMQ foresight node's server side: front (`server`), workers (`worker`, `ray_worker`),
the `foresight serve` command (`cli`), its supervisor and a child-process launcher (`process`).

The client, wire codec and protocol are the separate light package `foresight_client`.
"""
