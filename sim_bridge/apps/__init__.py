"""Robot-side programs that drive a node through `foresight_client`: offline `replay`, the
`planner`, the closed-loop `runtime` (environment, agent, subscribers) and the `demo`."""
